//! `ktls-trace trace` and `doctor` on whatever kernel runs the tests: the host (no
//! kprobes, no kTLS: the tracepoint fallback) and the QEMU guests (where the same tests
//! force `--backend tracepoint` to keep the fallback proven on real kTLS kernels too).

use std::{process::Command, time::Duration};

use ktls_trace_tests::{
    GUEST_ONLY, Trace, TraceOutput, Workload, bin, has_kprobes, output_within, require_root,
    run_ktls_trace, without_tracefs,
};

/// Does this kernel have the tracepoints the fallback needs? (6.1 has no
/// sock:sock_send_length; it appeared in 6.3.)
fn has_sock_send_length() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| {
            std::path::Path::new(t)
                .join("events/sock/sock_send_length")
                .exists()
        })
}

/// One run of the PID-filter scenario: two sendfile workloads, only `traced` traced.
/// Returns the trace's output once the traced process has exited (trace stops by itself).
fn traced_beside_another(n: u64, m: u64) -> (TraceOutput, u32, u32) {
    let mut traced = Workload::start("plain-sendfile", n);
    let mut other = Workload::start("plain-sendfile", m);
    let traced_pid = traced.pid;
    let pid = traced_pid.to_string();
    let trace = Trace::start(&["--backend", "tracepoint", "--pid", &pid]);
    traced.go();
    other.go();
    let other_pid = other.pid;
    let r_other = other.finish();
    let r = traced.finish();
    assert_eq!(r["sent"], n);
    assert_eq!(r_other["sent"], m);
    (trace.wait(), traced_pid, other_pid)
}

#[test]
fn tracepoint_mode_reports_exact_sendfile_bytes_for_the_traced_pid_only() {
    require_root();
    const N: u64 = 1_000_000;
    const M: u64 = 300_000;
    // The kernel may decline to run a program and count it (`trace_call_bpf` while
    // another BPF program or a bpf() map access holds the CPU): 7.3.4 in CI once skipped
    // the traced process's one sendfile call, and the tracer said so ("calls the kernel
    // did not let the programs see: sendfile64 1"). That run proves the accounting, not
    // the bytes, so the scenario runs again; a loss the kernel did not count fails at once.
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    let (out, traced_pid, other_pid) = loop {
        let (out, traced_pid, other_pid) = traced_beside_another(N, M);
        // The other workload runs the same programs (they filter by PID inside), so a
        // skip may be its call: then the traced bytes are exact and the test goes on.
        let skipped = out.assert_only_kernel_skips(2);
        if out.bytes_done("sendfile64", None) == N || skipped == 0 || attempt == ATTEMPTS {
            break (out, traced_pid, other_pid);
        }
        assert!(
            out.stderr_text()
                .contains("events were dropped in the kernel"),
            "a kernel skip not said on stderr: {}",
            out.census()
        );
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "KT-NOTE attempt {attempt}: the kernel skipped {skipped} calls, among them the traced sendfile's (counted and said); running again"
        );
        attempt += 1;
    };
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("traced processes have exited"),
        "{}",
        out.stderr_text()
    );

    assert!(!out.events.is_empty());
    for e in &out.events {
        assert_eq!(e["pid"], traced_pid, "event of another process: {e}");
        assert_ne!(e["pid"], other_pid);
    }
    // Exactly the file's bytes through sendfile, in one call here.
    assert_eq!(
        out.bytes_done("sendfile64", None),
        N,
        "sendfile's bytes: {}",
        out.census()
    );
    let calls: Vec<_> = out.of("sendfile64").collect();
    assert!(!calls.is_empty());
    for c in &calls {
        assert_eq!(c["comm"], "ktls-workload");
        assert!(
            c["latency_ns"].as_u64().is_some(),
            "sendfile has a latency: {c}"
        );
        assert!(c["out_fd"].as_i64().is_some() && c["in_fd"].as_i64().is_some());
    }
    let summary = out.summary.as_ref().expect("summary");
    assert_eq!(summary["probes"]["sendfile64"]["bytes_done"], N);
    assert_eq!(summary["backend"], "tracepoint");

    if has_sock_send_length() {
        // TCP side: every byte the socket accepted, all inside the sendfile call.
        assert_eq!(out.bytes_done("sock_send_length", None), N);
        for e in out.of("sock_send_length") {
            assert_eq!(e["parent"], "sendfile64", "{e}");
            assert!(e["sock"].as_str().is_some_and(|s| s.len() == 16));
        }
        let socks: std::collections::BTreeSet<_> = out
            .of("sock_send_length")
            .map(|e| e["sock"].to_string())
            .collect();
        assert_eq!(socks.len(), 1, "one connection, one socket id");
    }
}

#[test]
fn comm_filter_selects_by_command_name() {
    require_root();
    let mut w = Workload::start("plain-write", 200_000);
    let trace = Trace::start(&[
        "--backend",
        "tracepoint",
        "--comm",
        "ktls-workload",
        "--duration",
        "8",
    ]);
    w.go();
    let pid = w.pid;
    w.finish();
    let out = trace.stop();
    assert!(out.status.success(), "{}", out.stderr_text());
    for e in &out.events {
        assert_eq!(e["comm"], "ktls-workload", "{e}");
    }
    if has_sock_send_length() {
        assert_eq!(out.bytes_done("sock_send_length", Some(pid)), 200_000);
    }
}

/// `--comm` names a process, not only a thread: `ktls-trace load` sends from its
/// `ktls-load-srv` thread (as Envoy's `wrk:worker_N` or a JVM's pool threads send for a
/// process the user knows by name), and `--comm ktls-trace` must see those bytes.
#[test]
fn comm_filter_matches_the_process_name_of_worker_threads() {
    require_root();
    const SIZE: u64 = 1 << 20;
    let trace = Trace::start(&[
        "--backend",
        "tracepoint",
        "--comm",
        "ktls-trace",
        "--duration",
        "60",
    ]);
    let (code, out, err) = run_ktls_trace(&[
        "load",
        "--mode",
        "plain-sendfile",
        "--requests",
        "2",
        "--file-size",
        &SIZE.to_string(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t = trace.stop();
    assert!(t.status.success(), "{}", t.stderr_text());
    let served: Vec<&serde_json::Value> = t
        .of("sendfile64")
        .filter(|e| e["comm"] == "ktls-load-srv")
        .collect();
    assert!(
        !served.is_empty(),
        "the load's server thread was not traced: {}",
        t.stderr_text()
    );
    for e in &served {
        assert_eq!(e["process"], "ktls-trace", "{e}");
    }
    let bytes: u64 = served.iter().filter_map(|e| e["ret"].as_u64()).sum();
    assert_eq!(bytes, 2 * SIZE, "every body byte of the two responses");
}

#[test]
fn missing_pid_is_one_line_and_exit_2() {
    require_root();
    let (code, stdout, stderr) = run_ktls_trace(&["trace", "--pid", "4194305"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no process with PID 4194305"), "{stderr}");
}

/// Lost events are counted and said, never silent. A 4 KiB ring buffer holds 39 events
/// and the reader drains it every 100 ms; 32 MB written as 16 KiB records, one write()
/// each, make about 2,000 TCP sends (each one event or two on every backend and kernel),
/// far more than 39 per 100 ms even in the emulated guests, so some must be lost.
#[test]
fn a_tiny_ring_buffer_loses_events_and_says_so() {
    require_root();
    const N: u64 = 32_000_000;
    let mut w = Workload::start("userspace-tls", N);
    let pid = w.pid.to_string();
    let trace = Trace::start(&["--pid", &pid, "--ring-kib", "4"]);
    w.go();
    assert_eq!(w.finish()["sent"], N);
    let out = trace.wait();
    assert!(out.status.success(), "{}", out.stderr_text());
    let summary = out.summary.as_ref().expect("summary");
    let drops = summary["drops"].as_u64().unwrap_or(0);
    assert!(drops > 0, "nothing was dropped: {}", out.census());
    assert_eq!(summary["events"], out.events.len(), "{}", out.census());
    assert!(
        out.stderr_text()
            .contains(&format!("{drops} events were dropped in the kernel")),
        "{}",
        out.stderr_text()
    );
}

/// `--cost` in tracepoint mode (the host's kernel has no kprobes): sendfile's syscall
/// tracepoints, enter and exit.
#[test]
fn cost_in_tracepoint_mode_counts_the_syscall_tracepoints() {
    require_root();
    let mut w = Workload::start("plain-sendfile", 300_000);
    let pid = w.pid.to_string();
    let trace = Trace::start(&["--pid", &pid, "--backend", "tracepoint", "--cost"]);
    w.go();
    w.finish();
    let out = trace.wait();
    assert!(out.status.success(), "{}", out.census());
    let s = out.summary.as_ref().expect("summary");
    let c = &s["cost"]["sendfile64"];
    assert_eq!(c["via"], "tracepoint", "{s}");
    let events = s["probes"]["sendfile64"]["events"].as_u64().unwrap_or(0);
    assert!(events > 0, "{}", out.census());
    // The programs run for every sendfile of the system (the --pid filter is inside
    // them): at least once per traced call.
    for side in ["entry", "return"] {
        assert!(
            c[side]["runs"].as_u64().unwrap_or(0) >= events,
            "{side}: {s}"
        );
        assert!(
            c[side]["ns_per_run"].as_f64().unwrap_or(0.0) > 0.0,
            "{side}: {s}"
        );
    }
}

/// `--cost`: the kernel's run-time statistics for each probe's programs, on kprobes and
/// on BPF trampolines (every kernel of the matrix takes both for do_sendfile).
#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn cost_gives_runs_and_ns_per_run_of_each_probe() {
    require_root();
    for backend in ["kprobe", "fentry"] {
        let mut w = Workload::start("plain-sendfile", 1_000_000);
        let pid = w.pid.to_string();
        let trace = Trace::start(&["--pid", &pid, "--backend", backend, "--cost"]);
        w.go();
        let r = w.finish();
        assert_eq!(r["sent"], 1_000_000);
        // The traced process is gone: trace stops by itself.
        let out = trace.wait();
        assert!(out.status.success(), "{}", out.census());
        let s = out.summary.as_ref().expect("summary");
        let events = s["probes"]["do_sendfile"]["events"].as_u64().unwrap_or(0);
        assert!(events > 0, "{}", out.census());
        let c = &s["cost"]["do_sendfile"];
        assert_eq!(c["via"], backend, "{s}");
        for side in ["entry", "return"] {
            // The --pid filter is inside the programs: they run for every call of the
            // system, so at least once per traced call.
            let runs = c[side]["runs"].as_u64().unwrap_or(0);
            assert!(
                runs >= events,
                "{backend} {side}: {runs} runs, {events} events: {s}"
            );
            let ns = c[side]["ns_per_run"].as_f64().unwrap_or(0.0);
            assert!(ns > 0.0, "{backend} {side}: {s}");
        }
        // Every attached probe has its line, and the text of the summary is not asked.
        let attached = out
            .stderr
            .iter()
            .find_map(|l| l.strip_prefix("ktls-trace: attached "))
            .unwrap_or_else(|| panic!("no attached line: {}", out.census()));
        for probe in attached.split(", ") {
            let probe = probe.split_whitespace().next().unwrap_or(probe);
            assert!(s["cost"][probe].is_object(), "{probe} has no cost: {s}");
        }
    }
}

/// A kretprobe follows at most `maxactive` calls at once (10 on these 2-CPU guests):
/// 32 threads blocked inside tcp_sendmsg lose returns. Each lost return is counted when
/// its thread next enters the function, so every write() is accounted for exactly: an
/// event, or one of `returns_missed` (which `drops` includes and stderr says).
#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn missed_kretprobe_returns_are_counted() {
    require_root();
    let mut w = Workload::start("parallel-write", 1 << 20);
    let pid = w.pid.to_string();
    // kprobes by name: BPF trampolines (the default where the kernel has them) have no
    // such limit.
    let trace = Trace::start(&["--pid", &pid, "--backend", "kprobe"]);
    w.go();
    let report = w.finish();
    let calls = report["calls"].as_u64().expect("calls");
    assert_eq!(report["wire_bytes"], report["sent"]);
    let out = trace.stop();
    assert!(out.status.success(), "{}", out.census());
    let summary = out.summary.as_ref().expect("summary");
    let missed = summary["returns_missed"].as_u64().expect("returns_missed");
    assert!(missed > 0, "no return was missed: {}", out.census());
    assert_eq!(summary["drops"], missed, "{}", out.census());
    let attached = out
        .stderr
        .iter()
        .find_map(|l| l.strip_prefix("ktls-trace: attached "))
        .unwrap_or_else(|| panic!("no attached line: {}", out.census()));
    let mut unseen = 0;
    for probe in ["tcp_sendmsg", "tcp_sendmsg_locked"] {
        if attached.split(", ").any(|p| p == probe) {
            let seen = out.of(probe).count() as u64;
            assert!(seen <= calls, "{probe}: {seen} events for {calls} calls");
            unseen += calls - seen;
        }
    }
    assert_eq!(unseen, missed, "{}", out.census());
    assert!(
        out.stderr_text().contains("returns missed: tcp_sendmsg"),
        "{}",
        out.stderr_text()
    );
}

/// Numbers that cannot be meant are refused before anything is attached: one line naming
/// the flag, exit 2 (never a panic after the probes are in, never a silent 0).
#[test]
fn bad_numbers_are_one_line_and_exit_2() {
    let cases: [(&[&str], &str); 9] = [
        (
            &["trace", "--duration", "inf"],
            "--duration must be a number of seconds",
        ),
        (
            &["trace", "--duration", "NaN"],
            "--duration must be a number of seconds",
        ),
        (&["trace", "--duration", "1e19"], "--duration"),
        (
            &["trace", "--duration=-1"],
            "--duration must be a number of seconds",
        ),
        (
            &["trace", "--ring-mib", "3"],
            "--ring-mib must be a power of two",
        ),
        (
            &["trace", "--ring-kib", "3"],
            "--ring-kib must be a power of two",
        ),
        (
            &["top", "--once", "--ring-mib", "2048"],
            "--ring-mib must be a power of two",
        ),
        (
            &["top", "--once", "--interval", "61"],
            "--interval must be between",
        ),
        (
            &["load", "--duration", "nan"],
            "--duration must be a positive number",
        ),
    ];
    for (args, needle) in cases {
        let (code, stdout, stderr) = run_ktls_trace(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// A name longer than the kernel keeps could never match: refused, with the name to use.
#[test]
fn comm_longer_than_the_kernel_keeps_is_refused() {
    for cmd in ["trace", "top"] {
        let (code, stdout, stderr) = run_ktls_trace(&[cmd, "--comm", "ktls-load-server"]);
        assert_eq!(code, 2, "{cmd}: {stderr}");
        assert!(stdout.is_empty(), "{cmd}: {stdout}");
        assert!(
            stderr.contains(r#"called "ktls-load-serve" there"#),
            "{cmd}: {stderr}"
        );
    }
}

#[test]
fn unprivileged_user_gets_one_line_saying_what_is_needed() {
    require_root();
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(ktls_trace_tests::bin("ktls-trace"))
        .args(["trace", "--duration", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("needs root, or the CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );
}

#[test]
fn auto_backend_says_which_mode_and_why() {
    require_root();
    let trace = Trace::start(&["--duration", "0.5"]);
    let out = trace.wait();
    assert!(out.status.success(), "{}", out.stderr_text());
    let first = out.stderr.first().cloned().unwrap_or_default();
    if has_kprobes() {
        assert!(first.contains("full mode"), "{first}");
        assert_eq!(out.summary.as_ref().expect("summary")["backend"], "kprobe");
    } else {
        assert!(first.contains("reduced mode"), "{first}");
        assert!(
            first.contains("CONFIG_KPROBES"),
            "the reason is given: {first}"
        );
        assert_eq!(
            out.summary.as_ref().expect("summary")["backend"],
            "tracepoint"
        );
    }
    // No raw attach errors anywhere.
    let text = out.stderr_text();
    assert!(
        !text.contains("errno") && !text.contains("os error"),
        "{text}"
    );
}

#[test]
fn sigterm_ends_with_a_json_summary() {
    require_root();
    let trace = Trace::start(&["--backend", "tracepoint"]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(trace.pid() as i32, libc::SIGTERM) };
    let out = trace.wait();
    assert!(out.status.success());
    let s = out.summary.expect("summary after SIGTERM");
    assert!(s["events"].as_u64().is_some() && s["drops"].as_u64().is_some());
}

/// Where tracefs is not mounted, `doctor` and `trace` mount it (in their own mount
/// namespace here) and see what they see where it is: the same tracepoints, and a
/// transfer's sendfile bytes, exactly. On kernels that inline `do_sendfile` (7.x) this
/// is the kprobe mode's sendfile64 tracepoint; without kprobes, the tracepoint mode.
#[test]
fn without_tracefs_mounted_doctor_and_trace_mount_it() {
    require_root();
    let doctor = |cmd: &mut Command| {
        let out = output_within(cmd.args(["doctor", "--json"]), Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let r: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
        r
    };
    let usual = doctor(&mut Command::new(bin("ktls-trace")));
    let fresh = doctor(without_tracefs(&mut Command::new(bin("ktls-trace"))));
    assert_eq!(fresh["tracefs"]["ok"], true, "{fresh}");
    assert_eq!(
        fresh["tracefs"]["detail"], "mounted at /sys/kernel/tracing",
        "{fresh}"
    );
    assert!(
        fresh["tracepoints"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "syscalls:sys_enter_sendfile64")),
        "{fresh}"
    );
    assert_eq!(fresh["tracepoints"], usual["tracepoints"]);
    assert_eq!(fresh["probe_points"], usual["probe_points"]);

    const N: u64 = 700_000;
    let mut w = Workload::start("plain-sendfile", N);
    let pid = w.pid.to_string();
    let mut cmd = Command::new(bin("ktls-trace"));
    without_tracefs(&mut cmd).args(["trace", "--json", "--pid", &pid]);
    let trace = Trace::start_command(cmd);
    w.go();
    assert_eq!(w.finish()["sent"], N);
    let out = trace.wait();
    assert!(out.status.success(), "{}", out.stderr_text());
    let sendfile = if out.of("do_sendfile").next().is_some() {
        "do_sendfile"
    } else {
        "sendfile64"
    };
    assert_eq!(out.bytes_done(sendfile, None), N, "{}", out.census());
}

#[test]
fn doctor_agrees_with_the_kernel() {
    require_root();
    let (code, stdout, stderr) = run_ktls_trace(&["doctor", "--json"]);
    let r: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
    // Every program of the object passes this kernel's verifier (kprobe programs load
    // even where kprobes cannot attach), 5.10's strict one included: 9 functions x
    // (kprobe + kretprobe) + 3 tracepoint programs, and where the kernel takes BPF
    // trampolines, an fentry + fexit pair for each of the functions of vmlinux it has.
    assert_eq!(r["programs_rejected"], serde_json::json!([]), "{stdout}");
    let verified: Vec<&str> = r["programs_verified"]
        .as_array()
        .expect("programs_verified")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let trampoline = |n: &&str| n.ends_with("_fentry") || n.ends_with("_fexit");
    assert_eq!(
        verified.iter().filter(|n| !trampoline(n)).count(),
        21,
        "{stdout}"
    );
    let pairs = verified.iter().filter(|n| trampoline(n)).count();
    if r["fentry"]["ok"] == true {
        // do_sendfile, tcp_sendmsg, tcp_sendmsg_locked; do_tcp_sendpages before 6.5.
        assert!(pairs == 6 || pairs == 8, "{stdout}");
    } else {
        assert_eq!(pairs, 0, "{stdout}");
    }
    // Every number top and verify show has a source, and `full` means none is missing.
    let numbers = r["numbers"].as_array().expect("numbers");
    // Ten, and where top derives its ciphertext (6.5+ with kernel TLS), an eleventh.
    let in_top = |n: &serde_json::Value| n["number"] == "kernel TLS ciphertext in top";
    assert_eq!(
        numbers.iter().filter(|n| !in_top(n)).count(),
        10,
        "{stdout}"
    );
    let missing = numbers.iter().filter(|n| n["source"] == "missing").count();
    assert_eq!(r["full"] == true, missing == 0, "{stdout}");
    assert_eq!(r["kprobes"]["ok"], has_kprobes());
    let tls_loaded = std::path::Path::new("/sys/module/tls").exists();
    assert_eq!(r["ktls_active"], tls_loaded, "{stdout}");
    assert_eq!(code == 0, r["full"] == true);
    if !has_kprobes() {
        assert_eq!(code, 1);
        assert!(
            r["kprobes"]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("CONFIG_KPROBES")
        );
        assert!(r["mode"].as_str().unwrap_or("").starts_with("reduced mode"));
    }
    if !tls_loaded {
        assert!(r["ktls"].as_str().unwrap_or("").contains("not"), "{stdout}");
    }
    // The text form says the same in words.
    let (code2, text, _) = run_ktls_trace(&["doctor"]);
    assert_eq!(code, code2);
    for k in [
        "kernel",
        "kprobes",
        "fentry",
        "kernel TLS",
        "probe points",
        "mode",
    ] {
        assert!(text.contains(k), "doctor text lacks {k}: {text}");
    }
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn doctor_reports_full_support_in_the_guests() {
    let _ = GUEST_ONLY;
    require_root();
    if !ktls_trace_tests::needs_ktls("doctor_reports_full_support_in_the_guests") {
        return;
    }
    let (code, stdout, _) = run_ktls_trace(&["doctor", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(r["full"], true);
    assert_eq!(r["kprobes"]["ok"], true);
    assert_eq!(r["ktls_active"], true);
    assert_eq!(r["backend"], "kprobe");
    for n in r["numbers"].as_array().expect("numbers") {
        assert!(
            n["source"] == "exact" || n["source"] == "derived",
            "{n} in {stdout}"
        );
    }
    let records = r["numbers"]
        .as_array()
        .and_then(|v| {
            v.iter().find(|n| {
                n["number"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("TLS records"))
            })
        })
        .expect("records");
    assert_eq!(records["source"], "exact", "{records}");
    // From 6.5, top derives the ciphertext from the records instead of probing pushes.
    let in_top = r["numbers"].as_array().and_then(|v| {
        v.iter()
            .find(|n| n["number"] == "kernel TLS ciphertext in top")
    });
    if ktls_trace_tests::kernel_version() >= (6, 5) {
        let n = in_top.unwrap_or_else(|| panic!("no ciphertext in top: {stdout}"));
        assert_eq!(n["source"], "derived", "{n}");
    } else {
        assert!(in_top.is_none(), "{stdout}");
    }
}

/// Where kernel TLS is missing (Debian's 5.10), doctor says so, says which numbers go
/// with it, and that full tracing is not possible; the other numbers stay exact.
#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn doctor_names_what_a_kernel_without_tls_cannot_measure() {
    require_root();
    if ktls_trace_tests::has_ktls() {
        ktls_trace_tests::skip(
            "doctor_names_what_a_kernel_without_tls_cannot_measure",
            "this kernel has kernel TLS",
        );
        return;
    }
    let (code, stdout, _) = run_ktls_trace(&["doctor", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(r["full"], false);
    assert_eq!(r["backend"], "kprobe");
    let source = |what: &str| {
        r["numbers"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|n| n["number"].as_str().is_some_and(|s| s.starts_with(what)))
            })
            .map(|n| n["source"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{what} not in {stdout}"))
    };
    assert_eq!(source("kernel TLS plaintext"), "missing");
    assert_eq!(source("TLS records"), "missing");
    assert_eq!(source("sendfile"), "exact");
    assert_eq!(source("user-space TLS vs plain"), "exact");
    let (_, text, _) = run_ktls_trace(&["doctor"]);
    assert!(text.contains("CONFIG_TLS"), "{text}");
    assert!(text.contains("MISSING"), "{text}");
}
