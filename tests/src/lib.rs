//! Helpers for the integration tests: find the binaries, run a workload that waits for
//! the tracer, run `ktls-trace trace --json` and collect what it printed.
//!
//! The same test executables run on the host (tracepoint mode) and inside the QEMU
//! guests (`cargo xtask vm-test`), where the binaries live in /opt/kt and
//! `KTLS_TRACE_BIN_DIR` points there.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod exporter;
pub mod load_server;

/// Collects what a child writes to a pipe, as it comes, on a thread: the text so far can
/// be read at any time (to wait for a line) while the child runs.
pub fn collect_text(mut pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Reason string for tests that only the kTLS guests can run.
pub const GUEST_ONLY: &str = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)";

/// The directory with `ktls-trace` and `ktls-workload`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KTLS_TRACE_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("test executable has no grandparent directory")
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// The static binary of `cargo xtask dist`, if there is one: in a guest
/// `/opt/kt/dist/ktls-trace` (xtask/src/vm/initramfs.rs); on the host
/// `KTLS_TRACE_DIST_BIN` (which `cargo xtask test` sets), else
/// `target/dist/ktls-trace-<version>-x86_64-linux-musl/ktls-trace` next to the profile
/// directory of this test executable (the tests crate has the workspace's version).
pub fn dist_bin() -> Option<PathBuf> {
    let path = if let Some(p) = std::env::var_os("KTLS_TRACE_DIST_BIN") {
        PathBuf::from(p)
    } else if guest().is_some() {
        bin_dir().join("dist/ktls-trace")
    } else {
        // target/<profile> -> target
        bin_dir().parent()?.join(format!(
            "dist/ktls-trace-{}-x86_64-linux-musl/ktls-trace",
            env!("CARGO_PKG_VERSION")
        ))
    };
    path.is_file().then_some(path)
}

/// For a test of the static binary: the binary, or None after saying the skip on a host
/// where nobody built it (a plain `cargo test`). Where it must exist (a guest, or
/// `KTLS_TRACE_DIST_BIN` named it) its absence fails the test.
pub fn needs_dist_bin(test: &str) -> Option<PathBuf> {
    if let Some(p) = dist_bin() {
        return Some(p);
    }
    let named = std::env::var_os("KTLS_TRACE_DIST_BIN");
    assert!(
        guest().is_none() && named.is_none(),
        "no static binary at {}: the guest image and `cargo xtask test` must carry it",
        named.map_or_else(
            || bin_dir().join("dist/ktls-trace").display().to_string(),
            |n| PathBuf::from(n).display().to_string()
        )
    );
    skip(
        test,
        "no static binary on this host: `cargo xtask dist` builds it (cargo xtask test does)",
    );
    None
}

/// The integration tests load eBPF programs: they must run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests need root (cargo xtask test runs them as root)"
    );
}

/// Which guest kernel series we run in ("6.1", "6.12"), if any.
pub fn guest() -> Option<String> {
    std::env::var("KTLS_TRACE_GUEST").ok()
}

/// Kernel major.minor of the running kernel.
pub fn kernel_version() -> (u32, u32) {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut it = rel.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|v| v.parse().ok()).expect("major");
    let minor = it.next().and_then(|v| v.parse().ok()).expect("minor");
    (major, minor)
}

pub fn has_kprobes() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

/// Is kernel TLS live on this kernel (the tls module loaded, or built in)?
pub fn has_ktls() -> bool {
    std::path::Path::new("/proc/net/tls_stat").exists()
}

/// Says that a test cannot run on this kernel, in the line the QEMU harness counts as a
/// skip (`KT-SKIP <test>: <why>`). Written straight to stderr, past libtest's capture, so
/// that every run shows it, not only failing ones.
pub fn skip(test: &str, why: &str) {
    let mut err = std::io::stderr().lock();
    // On a line of its own: libtest has already printed "test <name> ... " without a
    // newline, and prints the verdict after the test returns.
    let _ = writeln!(err, "\nKT-SKIP {test}: {why}");
}

/// For a test that needs kernel TLS: true when it is there; otherwise the skip is said
/// and the test returns. Kernels without it (Debian's 5.10 has `# CONFIG_TLS is not set`)
/// still run every other test; the kTLS ones run on every other kernel of the matrix.
pub fn needs_ktls(test: &str) -> bool {
    if has_ktls() {
        return true;
    }
    skip(test, &format!("kernel {} has no kernel TLS", release()));
    false
}

/// Waits for a child to exit; after `limit` it is killed and None returned.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Is the process running (present and not a zombie)?
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (comm) STATE ..." -- comm may contain spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Runs `cmd` in a mount namespace of its own where tracefs is not mounted (as on a
/// fresh boot of many distributions, which mount it on first use): tracefs and debugfs
/// are unmounted there only, and the child fails to start if a tracefs is still seen.
pub fn without_tracefs(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: unshare, mount, umount2 and access are async-signal-safe system calls on
    // static strings; they change only the child's own mount namespace, before it execs.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for dir in [
                c"/sys/kernel/debug/tracing",
                c"/sys/kernel/tracing",
                c"/sys/kernel/debug",
            ] {
                libc::umount2(dir.as_ptr(), libc::MNT_DETACH);
            }
            for events in [
                c"/sys/kernel/tracing/events",
                c"/sys/kernel/debug/tracing/events",
            ] {
                if libc::access(events.as_ptr(), libc::F_OK) == 0 {
                    return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
                }
            }
            Ok(())
        })
    }
}

/// `uname -r`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A `ktls-workload` process, stopped at its "ready" line until [`Workload::go`].
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Workload {
    pub fn start(mode: &str, bytes: u64) -> Workload {
        let mut child = Command::new(bin("ktls-workload"))
            .args([mode, &bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ktls-workload");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("workload did not start: {line:?}"));
        assert_eq!(pid, child.id());
        Workload {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Lets it send.
    pub fn go(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            s.write_all(b"go\n").expect("write go");
        }
    }

    /// Waits for it and returns its report (`sent`, `wire_bytes`, `records`).
    pub fn finish(mut self) -> Value {
        self.go();
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read report");
        let status = self.child.wait().expect("wait workload");
        assert!(
            status.success(),
            "workload failed: {status}; output {line:?}"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad report {line:?}: {e}"))
    }
}

/// A running `ktls-trace trace`.
pub struct Trace {
    child: Child,
    stdout_rx: mpsc::Receiver<Vec<String>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// What a finished trace printed.
#[derive(Debug)]
pub struct TraceOutput {
    pub status: ExitStatus,
    pub events: Vec<Value>,
    pub summary: Option<Value>,
    pub stderr: Vec<String>,
}

impl Trace {
    /// Starts `ktls-trace trace --json ARGS` and waits until it is attached.
    pub fn start(args: &[&str]) -> Trace {
        Trace::start_with(&bin("ktls-trace"), args)
    }

    /// [`Trace::start`] with another build of ktls-trace (the static one: [`dist_bin`]).
    pub fn start_with(ktls_trace: &std::path::Path, args: &[&str]) -> Trace {
        let mut cmd = Command::new(ktls_trace);
        cmd.arg("trace").arg("--json").args(args);
        Trace::start_command(cmd)
    }

    /// [`Trace::start`] of a command line that ends in `ktls-trace trace --json ...`
    /// (behind a wrapper such as `setpriv`).
    pub fn start_command(mut cmd: Command) -> Trace {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ktls-trace");
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, stdout_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let lines: Vec<String> = BufReader::new(out).lines().map_while(Result::ok).collect();
            let _ = tx.send(lines);
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("tracing (Ctrl-C to stop)") {
                    let _ = ready_tx.send(());
                }
                sink.lock().expect("lock").push(line);
            }
        });
        // Generous: inside a TCG guest, loading and verifying the programs is slow.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "ktls-trace exited early ({status}): {:?}",
                    stderr.lock().expect("lock")
                );
            }
            assert!(Instant::now() < deadline, "ktls-trace did not become ready");
        }
        Trace {
            child,
            stdout_rx,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the tracer printed a stderr line containing `needle`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .stderr
                .lock()
                .expect("lock")
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ktls-trace never printed {needle:?}: {:?}",
                self.stderr.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT and collects the output.
    pub fn stop(self) -> TraceOutput {
        // SAFETY: kill with a valid signal number on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait()
    }

    /// Waits for it to exit on its own (duration over, traced processes gone).
    pub fn wait(mut self) -> TraceOutput {
        let Some(status) = exit_within(&mut self.child, Duration::from_secs(120)) else {
            panic!(
                "ktls-trace did not exit: {:?}",
                self.stderr.lock().expect("lock")
            );
        };
        let lines = self
            .stdout_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("stdout collected");
        // Let the stderr reader finish.
        std::thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr.lock().expect("lock").clone();
        let mut events = Vec::new();
        let mut summary = None;
        for l in lines {
            let v: Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
            if v.get("summary").is_some() {
                assert!(summary.is_none(), "two summaries");
                summary = Some(v["summary"].clone());
            } else {
                assert!(summary.is_none(), "event after the summary: {l}");
                events.push(v);
            }
        }
        TraceOutput {
            status,
            events,
            summary,
            stderr,
        }
    }
}

impl TraceOutput {
    /// Events of one probe.
    pub fn of<'a>(&'a self, probe: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["probe"] == probe)
    }

    /// Sum of positive `ret` over a probe's events of process `pid` (None = any).
    pub fn bytes_done(&self, probe: &str, pid: Option<u32>) -> u64 {
        self.of(probe)
            .filter(|e| pid.is_none_or(|p| e["pid"] == p))
            .filter_map(|e| e["ret"].as_i64())
            .filter(|r| *r > 0)
            .map(|r| r as u64)
            .sum()
    }

    /// Sum of `bytes` over a probe's events.
    pub fn bytes_asked(&self, probe: &str) -> u64 {
        self.of(probe).filter_map(|e| e["bytes"].as_u64()).sum()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }

    /// [`assert_only_kernel_skips`] on this trace's summary, for a test where other
    /// processes call the same probed functions: the programs run for every process and
    /// filter by PID inside, so a skip can be another process's call (the summary cannot
    /// say whose; the traced process's exact byte counts can). Returns the skips.
    pub fn assert_only_kernel_skips(&self, most: u64) -> u64 {
        let s = self.summary.as_ref().expect("summary");
        let kernel = assert_only_kernel_skips(s, most, &self.census());
        if kernel > 0 {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "KT-NOTE {kernel} calls skipped by the kernel"
            );
        }
        kernel
    }

    /// What was seen, for a failing assertion's message: events per probe, the summary
    /// and stderr.
    pub fn census(&self) -> String {
        let mut per_probe = std::collections::BTreeMap::<String, usize>::new();
        for e in &self.events {
            *per_probe.entry(e["probe"].to_string()).or_default() += 1;
        }
        format!(
            "events per probe: {per_probe:?}\nsummary: {}\nstderr:\n{}",
            self.summary
                .as_ref()
                .map_or("none".into(), |s| s.to_string()),
            self.stderr_text()
        )
    }
}

/// Checks a `trace --json` summary object (`{"drops": .., "returns_missed": .., ...}`):
/// the tracer itself lost nothing (ring buffer, in-flight table, totals map, decoding),
/// and the only drops are calls the kernel did not run a program for and counted
/// (`skipped_by_kernel`, or a skipped return found as `returns_missed`), at most `most`.
/// Returns how many the kernel skipped. `context` goes into every failure message.
pub fn assert_only_kernel_skips(summary: &Value, most: u64, context: &str) -> u64 {
    let n = |k: &str| summary[k].as_u64().unwrap_or(u64::MAX);
    let kernel = n("returns_missed").saturating_add(n("skipped_by_kernel"));
    assert_eq!(
        n("drops"),
        kernel,
        "the tracer lost events of its own: {summary}\n{context}"
    );
    assert_eq!(n("undecodable"), 0, "{summary}\n{context}");
    assert!(
        kernel <= most,
        "more than {most} calls skipped by the kernel: {summary}\n{context}"
    );
    kernel
}

/// Runs `ktls-trace ARGS` to completion: (exit code, stdout, stderr).
pub fn run_ktls_trace(args: &[&str]) -> (i32, String, String) {
    // Generous: the slowest use is `verify` or `load` in the emulator.
    let out = output_within(
        Command::new(bin("ktls-trace")).args(args),
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `Command::output` with a deadline: a child that hangs is killed and named in the error,
/// so that a hang fails the test with its command line instead of stalling the whole run
/// (in the guests, until the executable's timeout kills it without a word).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<std::process::Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {what}: {e}"))?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                return Err(format!(
                    "{what} did not finish in {} s (killed); stderr: {}",
                    limit.as_secs(),
                    String::from_utf8_lossy(&stderr)
                ));
            }
            Err(e) => return Err(format!("wait for {what}: {e}")),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

// ---- a real terminal: tmux ----

/// A private tmux server with one fixed-size window running a shell.
pub struct Tmux {
    socket: String,
    dir: PathBuf,
}

impl Tmux {
    pub fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `name` keeps tests that run at the same time apart.
    pub fn start(name: &str, width: u16, height: u16) -> Tmux {
        let socket = format!("ktls-trace-test-{}-{name}", std::process::id());
        let dir = std::env::temp_dir().join(&socket);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let t = Tmux { socket, dir };
        t.cmd(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "env PS1='$ ' bash --norc --noprofile",
        ]);
        t
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        let out = output_within(
            Command::new("tmux").arg("-L").arg(&self.socket).args(args),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types a shell command line.
    pub fn line(&self, text: &str) {
        self.cmd(&["send-keys", "-t", "top", "-l", text]);
        self.cmd(&["send-keys", "-t", "top", "Enter"]);
    }

    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.cmd(&["send-keys", "-t", "top", k]);
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    pub fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-t", "top", "-p"])
    }

    pub fn alternate_screen(&self) -> bool {
        self.cmd(&["display-message", "-t", "top", "-p", "#{alternate_on}"])
            .trim()
            == "1"
    }

    /// Waits until `pred` holds for the screen; panics with the screen after `secs`.
    pub fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = output_within(
            Command::new("tmux").args(["-L", &self.socket, "kill-server"]),
            Duration::from_secs(30),
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
