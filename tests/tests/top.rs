//! `ktls-trace top`: the text snapshot (`--once`), the refusal without a terminal, and
//! the interactive view in a real terminal (tmux: keys with send-keys, the screen with
//! capture-pane). On the host these run in the tracepoint fallback; the `#[ignore]`d
//! ones need kprobes and kernel TLS and run inside the QEMU guests (cargo xtask vm-test).

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ktls_trace_tests::{
    Tmux, bin, guest, kernel_version, needs_ktls, output_within, require_root, run_ktls_trace,
};

/// Runs `ktls-workload MODE BYTES --no-wait` again and again until dropped, so that a
/// snapshot taken at any moment sees it sending.
struct Looper {
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Looper {
    fn start(mode: &str, bytes: u64) -> Looper {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), runs.clone());
        let exe = bin("ktls-workload");
        let mode = mode.to_string();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                // One run takes a second or two even in the emulator.
                let out = output_within(
                    Command::new(&exe).args([mode.as_str(), &bytes.to_string(), "--no-wait"]),
                    Duration::from_secs(120),
                )?;
                if !out.status.success() {
                    return Err(format!(
                        "ktls-workload {mode} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        Looper {
            stop,
            runs,
            handle: Some(handle),
        }
    }

    /// Stops and checks that every run succeeded; returns the number of runs.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => panic!("workload loop panicked"),
            }
        }
        self.runs.load(Ordering::Relaxed)
    }
}

impl Drop for Looper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One process row of a `--once` snapshot: column title -> cell text.
type OnceRow = BTreeMap<String, String>;

const COLUMNS: [(&str, usize, bool); 14] = [
    ("PID", 7, false),
    ("COMMAND", 15, true),
    ("PATH", 25, true),
    ("PAYLOAD/s", 10, false),
    ("TLS-IN/s", 9, false),
    ("TLS-OUT/s", 10, false),
    ("REC/s", 7, false),
    ("AVG-REC", 8, false),
    ("SF/s", 7, false),
    ("SF-p50", 8, false),
    ("SF-p99", 8, false),
    ("TLS-p50", 8, false),
    ("TLS-p99", 8, false),
    ("ZC%", 4, false),
];

/// Parses the process table of `top --once` (fixed-width columns, one space apart).
fn parse_once(stdout: &str) -> Vec<OnceRow> {
    let lines: Vec<&str> = stdout.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.trim_start().starts_with("PID COMMAND"))
        .unwrap_or_else(|| panic!("no table in:\n{stdout}"));
    let mut rows = Vec::new();
    for l in &lines[head + 1..] {
        if l.trim().is_empty() || l.starts_with('(') {
            break;
        }
        let mut row = OnceRow::new();
        let mut at = 0usize;
        for (title, width, _) in COLUMNS {
            let end = (at + width).min(l.len());
            let cell = l.get(at..end).unwrap_or("").trim();
            row.insert(title.to_string(), cell.to_string());
            at += width + 1;
        }
        rows.push(row);
    }
    rows
}

/// "12.3M" -> 12_300_000.
fn value(cell: &str) -> f64 {
    let (num, mult) = match cell.chars().last() {
        Some('K') => (&cell[..cell.len() - 1], 1e3),
        Some('M') => (&cell[..cell.len() - 1], 1e6),
        Some('G') => (&cell[..cell.len() - 1], 1e9),
        Some('T') => (&cell[..cell.len() - 1], 1e12),
        _ => (cell, 1.0),
    };
    num.parse::<f64>().map(|v| v * mult).unwrap_or(0.0)
}

/// Runs `top --once ARGS` while a workload loops; returns (stdout, rows, stderr).
fn once_with_load(mode: &str, bytes: u64, args: &[&str]) -> (String, Vec<OnceRow>, String) {
    let looper = Looper::start(mode, bytes);
    // Let the first run start sending.
    std::thread::sleep(Duration::from_millis(300));
    let mut all = vec!["top", "--once"];
    all.extend_from_slice(args);
    let (code, out, err) = run_ktls_trace(&all);
    let runs = looper.finish();
    assert_eq!(code, 0, "top --once failed: {err}\n{out}");
    assert!(runs > 0, "the workload never finished a run");
    let rows = parse_once(&out);
    (out, rows, err)
}

/// The busiest row of the workload processes.
fn workload_row<'a>(rows: &'a [OnceRow], out: &str) -> &'a OnceRow {
    rows.iter()
        .filter(|r| r["COMMAND"] == "ktls-workload")
        .max_by(|a, b| value(&a["PAYLOAD/s"]).total_cmp(&value(&b["PAYLOAD/s"])))
        .unwrap_or_else(|| panic!("no ktls-workload row:\n{out}"))
}

#[test]
fn once_shows_plain_sendfile_in_tracepoint_mode() {
    require_root();
    // Small files, many runs: on 6.1 the fallback has only sendfile64, one event at the
    // end of each call, and inside a TCG guest each run takes a while.
    let (out, rows, _) = once_with_load(
        "plain-sendfile",
        4_000_000,
        &["--backend", "tracepoint", "--interval", "3"],
    );
    assert!(out.contains("mode: reduced mode"), "{out}");
    assert!(out.contains("interval 3.00s"), "{out}");
    assert!(out.contains("dropped 0"), "{out}");
    let r = workload_row(&rows, &out);
    assert_eq!(r["PATH"], "plain sendfile", "{out}");
    assert!(value(&r["PAYLOAD/s"]) > 0.0, "{out}");
    assert!(value(&r["SF/s"]) > 0.0, "sendfile calls/s: {out}");
    assert_ne!(r["SF-p50"], "-", "{out}");
    assert_eq!(r["TLS-IN/s"], "0", "reduced mode sees no kernel TLS: {out}");
    assert_eq!(r["ZC%"], "0", "{out}");
}

#[test]
fn once_filters_by_command_name() {
    require_root();
    let (out, rows, _) = once_with_load(
        "plain-sendfile",
        4_000_000,
        &[
            "--backend",
            "tracepoint",
            "--interval",
            "3",
            "--comm",
            "ktls-workload",
        ],
    );
    assert!(!rows.is_empty(), "{out}");
    for r in &rows {
        assert_eq!(
            r["COMMAND"], "ktls-workload",
            "filtered in the kernel: {out}"
        );
    }
}

/// `--once --json`: one object for scripts, with the same rows as the text.
#[test]
fn once_json_for_scripts() {
    require_root();
    let looper = Looper::start("plain-sendfile", 4_000_000);
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = run_ktls_trace(&[
        "top",
        "--once",
        "--json",
        "--backend",
        "tracepoint",
        "--interval",
        "3",
        "--comm",
        "ktls-workload",
    ]);
    looper.finish();
    assert_eq!(code, 0, "{err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["interval_s"], 3.0);
    assert_eq!(v["drops_total"], 0);
    assert!(
        v["mode"].as_str().unwrap_or("").starts_with("reduced mode"),
        "{out}"
    );
    let procs = v["procs"].as_array().expect("procs");
    for p in procs {
        assert_eq!(p["comm"], "ktls-workload", "{out}");
    }
    // A run whose bytes went before the interval may still show a call in it (sendfile's
    // last call, returning 0 at the end of the file: 7.3 under TCG once): a row with no
    // payload, which has no path. Every row that sent in the interval is plain sendfile.
    let sending: Vec<_> = procs
        .iter()
        .filter(|p| p["payload_bps"].as_f64().unwrap_or(0.0) > 0.0)
        .collect();
    assert!(!sending.is_empty(), "{out}");
    for p in sending {
        assert_eq!(p["path"], "plain-sendfile", "{out}");
        assert!(
            p["paths_bps"]["plain-sendfile"].as_f64().unwrap_or(0.0) > 0.0,
            "{out}"
        );
    }
    for p in procs {
        if p["path"].is_null() {
            assert_eq!(
                p["payload_bps"], 0.0,
                "a row without a path sent nothing: {out}"
            );
        }
    }
    // --json belongs to --once.
    let (code, _, err) = run_ktls_trace(&["top", "--json"]);
    assert_eq!(code, 2, "{err}");
}

/// Lost events reach top's header and its JSON, never a silent zero (`--events`: top
/// classifying the event stream, as it did before the kernel added calls up): a 4 KiB ring
/// buffer (39 events) cannot hold what a process writing 64 bytes at a time makes between
/// two wake-ups of the reader, on every backend and kernel. (Not 16 KiB TLS-framed records:
/// under TCG, with another guest on the machine, a 3 s interval once held 20 of them.)
#[test]
fn a_tiny_ring_buffer_shows_drops_in_the_header_and_the_json() {
    require_root();
    let looper = Looper::start("small-writes", 1_000_000);
    std::thread::sleep(Duration::from_millis(300));
    let args = [
        "top",
        "--once",
        "--events",
        "--ring-kib",
        "4",
        "--interval",
        "3",
        "--comm",
        "ktls-workload",
    ];
    let (code, text, err) = run_ktls_trace(&args);
    assert_eq!(code, 0, "{err}\n{text}");
    let dropped: u64 = text
        .split_once("dropped ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop count in the header:\n{text}"));
    assert!(dropped > 0, "nothing dropped:\n{text}");
    assert!(
        text.contains(&format!(
            "WARNING: {dropped} events were dropped in the kernel"
        )),
        "{text}"
    );
    let mut json_args = args.to_vec();
    json_args.insert(2, "--json");
    let (code, out, err) = run_ktls_trace(&json_args);
    looper.finish();
    assert_eq!(code, 0, "{err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["drops_total"].as_u64().unwrap_or(0) > 0, "{out}");
    // The cause, as the header says it.
    let causes = v["drop_causes"].as_str().unwrap_or_default();
    assert!(causes.starts_with("ring buffer full "), "{out}");
}

/// The kernel's totals map full: `--max-keys 2` (hidden) leaves room for two keys (thread,
/// socket, probe), while a workload started again and again brings new ones. The calls
/// that found no room are drops, in the header and the JSON, never a silent zero.
#[test]
fn a_full_totals_map_shows_drops_in_the_json() {
    require_root();
    let looper = Looper::start("userspace-tls", 2_000_000);
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = run_ktls_trace(&[
        "top",
        "--once",
        "--json",
        "--max-keys",
        "2",
        "--interval",
        "4",
        "--comm",
        "ktls-workload",
    ]);
    let runs = looper.finish();
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(runs > 0, "the workload never finished a run");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["drops_total"].as_u64().unwrap_or(0) > 0, "{out}");
    let causes = v["drop_causes"].as_str().unwrap_or_default();
    assert!(causes.contains("totals map full "), "{out}");
    assert_eq!(v["ring_records_total"], 0, "{out}");
}

#[test]
fn without_a_terminal_top_points_to_once_and_trace_json() {
    // stdout is a pipe here.
    let (code, out, err) = run_ktls_trace(&["top"]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("not a terminal"), "{err}");
    assert!(
        err.contains("top --once") && err.contains("trace --json"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let (code, _, err) = run_ktls_trace(&["top", "--once", "--interval", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--interval"), "{err}");
    let (code, _, err) = run_ktls_trace(&["top", "--once", "--mode", "plain-sendfile"]);
    assert_eq!(code, 2, "--mode needs --load: {err}");
    let (code, _, err) = run_ktls_trace(&["top", "--once", "--pid", "4194305"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn once_with_builtin_load() {
    require_root();
    let (code, _, help) = run_ktls_trace(&["load", "--help"]);
    assert_eq!(code, 0, "the load command is missing: {help}");
    let (out, r) = once_on_builtin_load("plain-sendfile", &["--backend", "tracepoint"]);
    assert_eq!(r["PATH"], "plain sendfile", "{out}");
}

/// Real rustls traffic (the built-in load's user-space TLS mode, not a helper's framed
/// records) is classified as user-space TLS.
#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn once_classifies_real_rustls_traffic_as_userspace_tls() {
    require_root();
    let (out, r) = once_on_builtin_load("userspace-tls", &[]);
    assert_eq!(r["PATH"], "user-space TLS", "{out}");
    assert_eq!(r["TLS-IN/s"], "0", "not kernel TLS: {out}");
    assert_eq!(r["ZC%"], "0", "{out}");
}

/// `top --once --load --mode MODE ARGS`: the row of the load's process (which has sent),
/// after checking that the load stopped with top.
fn once_on_builtin_load(mode: &str, args: &[&str]) -> (String, OnceRow) {
    let mut all = vec!["top", "--once", "--load", "--mode", mode, "--interval", "3"];
    all.extend_from_slice(args);
    let (code, out, err) = run_ktls_trace(&all);
    assert_eq!(code, 0, "{err}\n{out}");
    let status = out
        .lines()
        .find(|l| l.starts_with(&format!("load: {mode}")))
        .unwrap_or_else(|| panic!("no load status line:\n{out}"));
    assert!(status.contains("running (pid "), "{out}");
    let pid: u32 = status
        .rsplit_once("(pid ")
        .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {status:?}"));
    let rows = parse_once(&out);
    let r = rows
        .iter()
        .find(|r| r["PID"] == pid.to_string())
        .unwrap_or_else(|| panic!("no row of the load process {pid}:\n{out}"))
        .clone();
    assert!(value(&r["PAYLOAD/s"]) > 0.0, "{out}");
    // The load is stopped with top.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the load process {pid} outlived top"
    );
    (out, r)
}

// ---- a real terminal: tmux ----

/// The screen line of the built-in load's process (`top --load`) with a non-zero payload
/// rate. Rows show the process's name; its server thread is `ktls-load-srv`.
fn busy_load_line(screen: &str, path: &str) -> Option<String> {
    screen
        .lines()
        .filter(|l| l.contains(LOAD_PROCESS) && !l.contains("ktls-trace top") && l.contains(path))
        .find(|l| {
            l.split_once(path)
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|payload| value(payload) > 0.0)
        })
        .map(str::to_string)
}

/// tmux is installed on the build machines by `cargo xtask setup`, and the QEMU guests
/// get the host's copy (xtask/src/vm/initramfs.rs): a missing tmux is a failure, not a skip.
fn require_tmux() {
    assert!(
        Tmux::available(),
        "tmux is not installed (cargo xtask setup installs it)"
    );
}

#[test]
fn interactive_view_in_a_real_terminal() {
    require_root();
    require_tmux();
    // On the build machine (no kprobes, no kTLS) the view runs in reduced mode over plain
    // sendfile; in the guests it shows what it is for: a kTLS sendfile server, recognised
    // from the kernel TLS probes (plain sendfile in full mode where the kernel has no TLS).
    let (mode, backend, path, header) = if guest().is_some() && ktls_trace_tests::has_ktls() {
        (
            "ktls-sendfile",
            "kprobe",
            "kTLS sendfile (zero-copy)",
            "full mode",
        )
    } else if guest().is_some() {
        // A kernel with kprobes but no kernel TLS (5.10): full mode over plain sendfile.
        ("plain-sendfile", "kprobe", "plain sendfile", "full mode")
    } else {
        (
            "plain-sendfile",
            "tracepoint",
            "plain sendfile",
            "reduced mode",
        )
    };
    let t = Tmux::start("interactive", 200, 50);
    let top = bin("ktls-trace");
    // The terminal settings before, to compare after quitting.
    t.line(&format!("stty -g > {}", t.file("before").display()));
    // The built-in load is one long-lived server process, so the row drilled into below
    // stays (a workload started per run would come and go between the keys). `--comm`
    // names the process; the bytes are sent by its `ktls-load-srv` thread.
    t.line(&format!(
        "{} top --load --mode {mode} --backend {backend} --comm {LOAD_PROCESS}",
        top.display()
    ));
    let s = t.wait_for("the load's row", 60, |s| busy_load_line(s, path).is_some());
    assert!(t.alternate_screen(), "top draws on the alternate screen");
    assert!(s.contains("ktls-trace top") && s.contains(header), "{s}");
    assert!(s.contains("PAYLOAD/s▼"), "default sort: {s}");
    assert!(s.contains("dropped 0"), "{s}");

    // Help overlay, and closing it.
    t.keys(&["?"]);
    let s = t.wait_for("the help overlay", 10, |s| s.contains("help: keys"));
    for k in [
        "q, Ctrl-C",
        "reverse the sort direction",
        "filter:",
        "pause",
        "interval",
    ] {
        assert!(s.contains(k), "help lacks {k:?}:\n{s}");
    }
    t.keys(&["Escape"]);
    t.wait_for("help closed", 10, |s| !s.contains("help: keys"));

    // Sort: next column, then reverse.
    t.keys(&["s"]);
    t.wait_for("sort by TLS-IN/s", 10, |s| s.contains("TLS-IN/s▼"));
    t.keys(&["r"]);
    t.wait_for("ascending sort", 10, |s| s.contains("TLS-IN/s▲"));
    t.keys(&["Left"]);
    t.wait_for("sort by PAYLOAD/s again", 10, |s| s.contains("PAYLOAD/s▼"));

    // Filter: typed at the bottom, applied with Enter; a filter nothing matches empties
    // the list and says so.
    t.keys(&["f", "s", "-", "t"]);
    t.wait_for("the filter prompt", 10, |s| {
        s.contains("filter (command or PID): s-t_")
    });
    t.keys(&["Enter"]);
    t.wait_for("the filter applied", 10, |s| {
        s.contains("filter \"s-t\"") && busy_load_line(s, path).is_some()
    });
    // f edits the current filter: "s-t" becomes "s-txyz", which matches nothing.
    t.keys(&["f", "x", "y", "z", "Enter"]);
    t.wait_for("nothing matching", 10, |s| {
        s.contains("filter \"s-txyz\"")
            && s.contains("no process matches the filter")
            && busy_load_line(s, path).is_none()
    });
    t.keys(&["f", "Escape"]);
    t.wait_for("the filter cleared", 10, |s| {
        !s.contains("filter \"") && busy_load_line(s, path).is_some()
    });

    // Interval.
    t.keys(&["+"]);
    t.wait_for("interval 2s", 10, |s| s.contains("interval 2.00s"));
    t.keys(&["d", "1", "Enter"]);
    t.wait_for("interval 1s", 10, |s| s.contains("interval 1.00s"));

    // Pause.
    t.keys(&["p"]);
    t.wait_for("paused", 10, |s| s.contains("PAUSED"));
    t.keys(&["p"]);
    t.wait_for("running again", 10, |s| !s.contains("PAUSED"));

    // Drill into the busiest row, and back.
    t.wait_for("a busy row", 30, |s| busy_load_line(s, path).is_some());
    t.keys(&["Home", "Enter"]);
    let s = t.wait_for("the connections view", 10, |s| {
        s.contains("payload B/s over the last minute")
    });
    assert!(s.contains("SOCKET") && s.contains("PEER"), "{s}");
    // The row is the process; the drill-down names the threads that sent (the load's
    // client threads send requests too), the server's sender among them.
    let threads = s
        .lines()
        .find(|l| l.contains("threads: "))
        .unwrap_or_else(|| panic!("no threads line:\n{s}"));
    assert!(threads.contains(&format!("{LOAD_THREAD} (")), "{s}");
    // The loopback connection's addresses: from the tracer's socket table, or from
    // sock_diag's list of the process's sockets where an id could not be resolved.
    assert!(s.contains("127.0.0.1:"), "{s}");
    t.keys(&["Escape"]);
    t.wait_for("the process list", 10, |s| s.contains("processes:"));

    // Resizing: narrower drops columns, too small shows a message, back to normal.
    t.cmd(&["resize-window", "-t", "top", "-x", "80", "-y", "24"]);
    t.wait_for("the narrow table", 10, |s| {
        s.contains("PAYLOAD/s") && !s.contains("TLS-p50")
    });
    t.cmd(&["resize-window", "-t", "top", "-x", "40", "-y", "10"]);
    t.wait_for("the too-small message", 10, |s| {
        s.contains("terminal too small")
    });
    t.cmd(&["resize-window", "-t", "top", "-x", "200", "-y", "50"]);
    t.wait_for("the full table", 10, |s| s.contains("TLS-p50"));

    // Quit: the shell is usable and the terminal as before.
    t.keys(&["q"]);
    t.wait_for("the shell prompt", 20, |s| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim() == "$")
    });
    assert!(!t.alternate_screen(), "the alternate screen was left");
    t.line(&format!("stty -g > {}", t.file("after").display()));
    t.line("echo OK-$((40+2))");
    t.wait_for("the shell answering", 10, |s| s.contains("OK-42"));
    let before = std::fs::read_to_string(t.file("before")).expect("stty before");
    let after = std::fs::read_to_string(t.file("after")).expect("stty after");
    assert_eq!(before, after, "terminal settings restored");
    // The load went with top.
    let load_gone = Instant::now() + Duration::from_secs(10);
    while load_running() {
        assert!(Instant::now() < load_gone, "top left its load running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The process name of `ktls-trace load` (`--comm` matches it as well as thread names).
const LOAD_PROCESS: &str = "ktls-trace";
/// The thread of `ktls-trace load` that serves.
const LOAD_THREAD: &str = "ktls-load-srv";

/// Whether a `ktls-trace load` process runs (the one `top --load` started).
fn load_running() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"load".as_slice()))
        })
}

#[test]
fn sigterm_restores_the_terminal_and_stops_the_load() {
    require_root();
    require_tmux();
    let t = Tmux::start("sigterm", 120, 30);
    let pidfile = t.file("pid");
    t.line(&format!("stty -g > {}", t.file("before").display()));
    t.line(&format!(
        "sh -c 'echo $$ > {}; exec {} top --backend tracepoint --load --mode plain-sendfile'",
        pidfile.display(),
        bin("ktls-trace").display()
    ));
    // "mode:" is on top's screen, not in the command line typed above.
    t.wait_for("top running", 60, |s| s.contains("mode: "));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !load_running() {
        assert!(Instant::now() < deadline, "top --load started no load");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(t.alternate_screen());
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: kill(2) with a valid signal on the process the test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    t.wait_for("the shell prompt", 20, |s| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim() == "$")
    });
    assert!(!t.alternate_screen());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "top exited"
    );
    // Its load child is stopped with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while load_running() {
        assert!(Instant::now() < deadline, "the load outlived top's SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.line(&format!("stty -g > {}", t.file("after").display()));
    t.line("echo OK-$((40+2))");
    t.wait_for("the shell answering", 10, |s| s.contains("OK-42"));
    assert_eq!(
        std::fs::read_to_string(t.file("before")).expect("before"),
        std::fs::read_to_string(t.file("after")).expect("after"),
        "terminal settings restored"
    );
}

// ---- kernel TLS: the QEMU guests ----

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn once_classifies_ktls_sendfile_as_zero_copy() {
    require_root();
    if !needs_ktls("once_classifies_ktls_sendfile_as_zero_copy") {
        return;
    }
    // 1 MB runs: an 8 MB kTLS sendfile took 3.5 s under TCG, longer than the interval,
    // and once none finished inside it (no SF-p99 anywhere). A run of 1 MB takes about a
    // second there, so every interval holds the end of one.
    let (out, rows, _) = once_with_load("ktls-sendfile", 1_000_000, &["--interval", "3"]);
    assert!(out.contains("mode: full mode"), "{out}");
    // From 6.5 top does not probe the TCP pushes: the ciphertext is derived from the
    // records (verify's stage 3 checks that rule against the pushes on every kernel).
    let derived = kernel_version() >= (6, 5);
    assert_eq!(
        out.contains("kernel TLS ciphertext derived from its records"),
        derived,
        "{out}"
    );
    let r = workload_row(&rows, &out);
    assert_eq!(r["PATH"], "kTLS sendfile (zero-copy)", "{out}");
    let (tls_in, tls_out) = (value(&r["TLS-IN/s"]), value(&r["TLS-OUT/s"]));
    assert!(tls_in > 0.0, "{out}");
    assert!(tls_out > 0.0, "ciphertext pushed into TCP: {out}");
    if derived {
        // Full 16 KiB records add 22 or 29 bytes each: well under 1% (shown rounded).
        assert!(
            tls_out >= tls_in * 0.99 && tls_out <= tls_in * 1.02,
            "{out}"
        );
    }
    assert!(value(&r["REC/s"]) > 0.0, "{out}");
    let rec = value(&r["AVG-REC"]);
    assert!(
        rec > 1000.0 && rec <= 16_384.0 * 1.01,
        "mean record size: {out}"
    );
    assert_eq!(r["ZC%"], "100", "{out}");
    assert_ne!(r["TLS-p50"], "-", "{out}");
    // The interval can hold the end of one run's sendfile and the start of the next
    // run's (another process, with payload but no finished call yet). A finished
    // sendfile's latency must be shown.
    assert!(
        rows.iter()
            .any(|r| r["COMMAND"] == "ktls-workload" && r["SF-p99"] != "-"),
        "{out}"
    );
    assert!(out.contains("tls_stat: TlsCurrTxSw"), "{out}");
}

/// A real client against the built-in server: Debian's curl (in the guest image) fetches
/// again and again from `load --server-only --mode ktls-sendfile`, and top, filtered to
/// the server's PID, classifies the server as kernel TLS sendfile, zero-copy.
#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn once_classifies_the_server_while_curl_fetches() {
    use std::io::BufRead as _;
    require_root();
    if !needs_ktls("once_classifies_the_server_while_curl_fetches") {
        return;
    }
    let curl = ktls_trace_tests::which("curl").expect("curl is in the guest image");
    let mut server = Command::new(bin("ktls-trace"))
        .args(["load", "--server-only", "--mode", "ktls-sendfile"])
        .args(["--listen", "127.0.0.1:0", "--file-size", "4M", "--json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting load --server-only");
    let mut ready = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("ready line");
    let ready: serde_json::Value =
        serde_json::from_str(&ready).unwrap_or_else(|e| panic!("ready line {ready:?}: {e}"));
    let url = format!("https://{}/f", ready["listen"].as_str().expect("listen"));
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let fetcher = std::thread::spawn(move || -> Result<u64, String> {
        let mut fetched = 0;
        while !flag.load(Ordering::Relaxed) {
            let out = output_within(
                Command::new(&curl).args(["-sSk", "--max-time", "60", "-o", "/dev/null", &url]),
                Duration::from_secs(90),
            )?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            fetched += 1;
        }
        Ok(fetched)
    });
    let pid = server.id().to_string();
    let (code, out, err) = run_ktls_trace(&["top", "--once", "--interval", "3", "--pid", &pid]);
    stop.store(true, Ordering::Relaxed);
    let fetched = fetcher.join().expect("fetcher thread");
    let _ = server.kill();
    let _ = server.wait();
    assert!(fetched.expect("curl") > 0, "curl never finished a fetch");
    assert_eq!(code, 0, "{err}\n{out}");
    let rows = parse_once(&out);
    assert!(!rows.is_empty(), "no row:\n{out}");
    for r in &rows {
        assert_eq!(r["PID"], pid, "only the server is traced:\n{out}");
    }
    let r = &rows[0];
    assert_eq!(r["PATH"], "kTLS sendfile (zero-copy)", "{out}");
    assert_eq!(r["ZC%"], "100", "{out}");
    assert!(value(&r["TLS-IN/s"]) > 0.0, "{out}");
    assert!(value(&r["TLS-OUT/s"]) > 0.0, "{out}");
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn once_classifies_ktls_write() {
    require_root();
    if !needs_ktls("once_classifies_ktls_write") {
        return;
    }
    let (out, rows, _) = once_with_load("ktls-write", 8_000_000, &["--interval", "3"]);
    let r = workload_row(&rows, &out);
    assert_eq!(r["PATH"], "kTLS write", "{out}");
    assert!(value(&r["TLS-IN/s"]) > 0.0, "{out}");
    assert!(value(&r["TLS-OUT/s"]) > 0.0, "{out}");
    assert_eq!(r["ZC%"], "0", "{out}");
}

#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn once_classifies_userspace_tls() {
    require_root();
    let (out, rows, _) = once_with_load("userspace-tls", 8_000_000, &["--interval", "3"]);
    let r = workload_row(&rows, &out);
    assert_eq!(r["PATH"], "user-space TLS", "{out}");
    assert!(value(&r["PAYLOAD/s"]) > 0.0, "{out}");
    assert_eq!(r["TLS-IN/s"], "0", "not kernel TLS: {out}");
    assert_eq!(r["ZC%"], "0", "{out}");
}

#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn once_classifies_plain_sendfile_with_kprobes() {
    require_root();
    let (out, rows, _) = once_with_load("plain-sendfile", 8_000_000, &["--interval", "3"]);
    assert!(out.contains("mode: full mode"), "{out}");
    let r = workload_row(&rows, &out);
    assert_eq!(r["PATH"], "plain sendfile", "{out}");
    assert!(value(&r["PAYLOAD/s"]) > 0.0, "{out}");
    assert_eq!(r["TLS-IN/s"], "0", "{out}");
}

/// `top --once --json ARGS` running in the background, ready once it has attached.
struct BackgroundTop {
    child: std::process::Child,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl BackgroundTop {
    fn start(args: &[&str]) -> BackgroundTop {
        use std::{io::Read as _, process::Stdio};
        let mut child = Command::new(bin("ktls-trace"))
            .args(["top", "--once", "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ktls-trace top");
        let mut out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, stdout) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        let stderr = ktls_trace_tests::collect_text(err);
        BackgroundTop {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until its probes are attached (the start-up lines say so).
    fn wait_attached(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self
            .stderr
            .lock()
            .expect("lock")
            .contains("ktls-trace: attached")
        {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "top exited early ({status}): {}",
                    self.stderr.lock().expect("lock")
                );
            }
            assert!(Instant::now() < deadline, "top did not attach");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends its interval now with SIGINT, as Ctrl-C does (`top --once` then prints what
    /// it has seen so far), and returns that JSON snapshot.
    fn stop(mut self) -> serde_json::Value {
        // SAFETY: kill with a valid signal number on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = ktls_trace_tests::exit_within(&mut self.child, Duration::from_secs(180))
            .expect("top --once did not end");
        let out = self
            .stdout
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        let err = self.stderr.lock().expect("lock").clone();
        assert!(status.success(), "top failed: {err}\n{out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
    }
}

/// `top` reads totals the kernel adds up (no ring-buffer record per call); its numbers
/// must be exactly those of `top --events`, which classifies every call from the event
/// stream, on the same load: both run side by side over the same kernel TLS sendfile,
/// kernel TLS write and user-space TLS transfers, and every process row has the same
/// payload bytes per path, ciphertext, records and sendfile calls, and the same number
/// of calls.
#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn top_from_kernel_totals_equals_top_from_events() {
    require_root();
    if !needs_ktls("top_from_kernel_totals_equals_top_from_events") {
        return;
    }
    // The interval is an upper bound: both end by SIGINT once the transfers are done.
    let args = ["--interval", "60", "--comm", "ktls-workload"];
    let mut maps = BackgroundTop::start(&args);
    let mut with_events: Vec<&str> = args.to_vec();
    with_events.push("--events");
    let mut events = BackgroundTop::start(&with_events);
    maps.wait_attached();
    events.wait_attached();
    for mode in ["ktls-sendfile", "ktls-write", "userspace-tls"] {
        let out = output_within(
            Command::new(bin("ktls-workload")).args([mode, "3000000", "--no-wait"]),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "ktls-workload {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (m, e) = (maps.stop(), events.stop());
    let text = format!("from the kernel's totals: {m}\nfrom events: {e}");
    assert!(
        m["mode"]
            .as_str()
            .unwrap_or("")
            .contains("totals added up in the kernel"),
        "{text}"
    );
    assert_eq!(m["drops_total"], 0, "{text}");
    assert_eq!(e["drops_total"], 0, "{text}");
    assert_eq!(m["events"], e["events"], "calls: {text}");
    let rows = |v: &serde_json::Value| -> BTreeMap<u64, serde_json::Value> {
        v["procs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p["pid"].as_u64().unwrap_or(0), p["totals"].clone()))
            .collect()
    };
    let (mr, er) = (rows(&m), rows(&e));
    assert!(!er.is_empty(), "{text}");
    assert_eq!(mr, er, "{text}");
    let paths: Vec<&str> = er
        .values()
        .flat_map(|t| {
            ["ktls-sendfile", "ktls-write", "userspace-tls"]
                .into_iter()
                .filter(|p| t["payload"][*p].as_u64().unwrap_or(0) > 0)
        })
        .collect();
    for p in ["ktls-sendfile", "ktls-write", "userspace-tls"] {
        assert!(paths.contains(&p), "no {p} payload: {text}");
    }
}
