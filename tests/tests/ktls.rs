//! The kprobe path, on real kernels: these run inside the QEMU guests of every kernel of
//! the matrix (6.1: tls_sw_sendpage + do_tcp_sendpages; 6.12 and later: tls_sw_sendmsg
//! with MSG_SPLICE_PAGES + tcp_sendmsg_locked; 5.10: no kernel TLS, the plain and
//! user-space TLS paths only), started by `cargo xtask vm-test` with `--include-ignored`.
//! On the host they are ignored: its kernel has neither kprobes nor kTLS.

use std::collections::BTreeSet;

use ktls_trace_tests::{Trace, TraceOutput, Workload, kernel_version, needs_ktls, require_root};
use serde_json::Value;

const MSG_SPLICE_PAGES: &str = "MSG_SPLICE_PAGES";
/// TLS_MAX_PAYLOAD_SIZE: a record carries at most 16 KiB of plaintext.
const RECORD: u64 = 16 * 1024;
/// TLS 1.3 AES-GCM: 5 header + 1 content type + 16 tag bytes per record.
const TLS13_OVERHEAD: u64 = 22;

fn before_6_5() -> bool {
    kernel_version() < (6, 5)
}

/// (plaintext probe, TCP push probe) for this kernel era.
fn era_probes() -> (&'static str, &'static str) {
    if before_6_5() {
        ("tls_sw_sendpage", "do_tcp_sendpages")
    } else {
        ("tls_sw_sendmsg", "tcp_sendmsg_locked")
    }
}

fn socks(out: &TraceOutput, probe: &str) -> BTreeSet<String> {
    out.of(probe).map(|e| e["sock"].to_string()).collect()
}

fn flags(e: &Value) -> &str {
    e["flags"].as_str().unwrap_or("")
}

/// The probe that stands for sendfile(2) in this trace: do_sendfile, or the syscall
/// tracepoints where a kernel build inlined it.
fn sendfile_probe(out: &TraceOutput) -> &'static str {
    if out.of("sendfile64").next().is_some() {
        "sendfile64"
    } else {
        "do_sendfile"
    }
}

/// The kTLS sends and flushes of a trace: every event that closes records.
fn ktls_sends(out: &TraceOutput) -> impl Iterator<Item = &Value> {
    out.events.iter().filter(|e| {
        matches!(
            e["probe"].as_str(),
            Some("tls_sw_sendpage" | "tls_sw_sendmsg" | "tls_sw_splice_eof")
        )
    })
}

/// Runs one workload under `trace --pid` until it exits.
/// Traces one workload run with the default backend (kprobes).
fn traced(mode: &str, bytes: u64) -> (TraceOutput, Value, u32) {
    traced_with("auto", mode, bytes)
}

fn traced_with(backend: &str, mode: &str, bytes: u64) -> (TraceOutput, Value, u32) {
    let mut w = Workload::start(mode, bytes);
    let pid = w.pid;
    let trace = Trace::start(&["--backend", backend, "--pid", &pid.to_string()]);
    w.go();
    let report = w.finish();
    let out = trace.wait();
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(out.summary.as_ref().expect("summary")["drops"], 0);
    (out, report, pid)
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn the_right_probe_points_attach_for_this_kernel() {
    require_root();
    if !needs_ktls("the_right_probe_points_attach_for_this_kernel") {
        return;
    }
    let trace = Trace::start(&["--backend", "kprobe", "--duration", "0.2"]);
    let out = trace.wait();
    let attached = out
        .stderr
        .iter()
        .find_map(|l| l.strip_prefix("ktls-trace: attached "))
        .unwrap_or_else(|| panic!("no attached line: {}", out.stderr_text()))
        .to_string();
    let names: BTreeSet<&str> = attached.split(", ").collect();
    for p in ["tls_sw_sendmsg", "tcp_sendmsg", "tcp_sendmsg_locked"] {
        assert!(names.contains(p), "{p} not attached: {attached}");
    }
    assert!(
        names.contains("do_sendfile") || names.contains("sendfile64"),
        "no sendfile probe: {attached}"
    );
    assert!(
        !names.contains("tls_push_record"),
        "no number depends on it: {attached}"
    );
    if before_6_5() {
        assert!(names.contains("tls_sw_sendpage"), "{attached}");
        assert!(names.contains("do_tcp_sendpages"), "{attached}");
    } else {
        assert!(!names.contains("tls_sw_sendpage"), "{attached}");
        assert!(!names.contains("do_tcp_sendpages"), "{attached}");
        assert!(names.contains("tls_sw_splice_eof"), "{attached}");
    }
    assert!(out.stderr[0].contains("full mode"), "{}", out.stderr[0]);
}

/// With `--backend fentry` the functions of vmlinux run on BPF trampolines (every kernel
/// of the matrix takes them), the tls module's on kprobes; the default uses none.
#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn backend_fentry_runs_the_functions_of_vmlinux_on_trampolines() {
    require_root();
    let line = |args: &[&str]| -> Option<String> {
        let out = Trace::start(args).wait();
        out.stderr
            .iter()
            .find_map(|l| l.strip_prefix("ktls-trace: BPF trampolines (fentry/fexit) on "))
            .map(str::to_string)
    };
    let on = line(&["--backend", "fentry", "--duration", "0.2"]).expect("no trampolines line");
    let names: BTreeSet<&str> = on
        .split_once(';')
        .map_or(on.as_str(), |(l, _)| l)
        .split(", ")
        .collect();
    for p in ["do_sendfile", "tcp_sendmsg", "tcp_sendmsg_locked"] {
        assert!(names.contains(p), "{p} not on a trampoline: {on}");
    }
    assert_eq!(names.contains("do_tcp_sendpages"), before_6_5(), "{on}");
    assert!(!names.iter().any(|n| n.starts_with("tls_")), "{on}");
    assert_eq!(line(&["--duration", "0.2"]), None);
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_sendfile_is_traced_from_sendfile_through_encryption_to_tcp() {
    require_root();
    if !needs_ktls("ktls_sendfile_is_traced_from_sendfile_through_encryption_to_tcp") {
        return;
    }
    // The same numbers whether the functions of vmlinux run on kprobes or trampolines.
    for backend in ["auto", "fentry"] {
        check_ktls_sendfile(backend);
    }
}

fn check_ktls_sendfile(backend: &str) {
    // Not a multiple of the record size, so the last record is a short one.
    const N: u64 = 1_000_000;
    let (out, report, pid) = traced_with(backend, "ktls-sendfile", N);
    assert_eq!(report["sent"], N);
    let (tls_probe, push_probe) = era_probes();

    // 1. The file entered the kernel through sendfile.
    let sendfile = sendfile_probe(&out);
    assert_eq!(
        out.bytes_done(sendfile, Some(pid)),
        N,
        "{}",
        out.stderr_text()
    );

    // 2. Exactly N plaintext bytes reached kernel TLS, all nested under sendfile, on a
    // TLS 1.3 AES-GCM-128 socket as kernel TLS itself reports it.
    let tls: Vec<&Value> = out.of(tls_probe).collect();
    assert!(!tls.is_empty(), "no {tls_probe} events");
    assert_eq!(out.bytes_done(tls_probe, Some(pid)), N);
    for e in &tls {
        assert_eq!(e["parent"], sendfile, "{e}");
        assert_eq!(e["pid"], pid);
        assert_eq!(
            (&e["tls_version"], &e["tls_cipher"]),
            (&"1.3".into(), &"aes-128-gcm".into()),
            "{e}"
        );
    }
    if before_6_5() {
        // One call per 4 KiB page of the file (kernel-paths.md: 977 for 4,000,000 bytes).
        assert_eq!(tls.len() as u64, N.div_ceil(4096), "sendpage calls");
        assert!(
            out.of("tls_sw_sendmsg").next().is_none(),
            "sendfile must not use sendmsg on 6.1"
        );
    } else {
        // The splice path: every call carries MSG_SPLICE_PAGES (read from msghdr at the
        // BTF offset: this also proves the offset is right on this kernel).
        for e in &tls {
            assert!(flags(e).contains(MSG_SPLICE_PAGES), "{e}");
        }
        // One call per pipe chunk: splice moves 16 pages (64 KiB) at a time
        // (kernel-paths.md: 62 splice calls + 3 writes = 65 for a 4,000,000-byte file).
        assert_eq!(
            tls.len() as u64,
            N.div_ceil(65536),
            "splice-path sendmsg calls"
        );
    }

    // 3. Ciphertext left through the TCP push function, on the same socket, with the
    // TLS 1.3 record overhead: N + 22 per record, records of at most 16 KiB.
    let tls_socks = socks(&out, tls_probe);
    assert_eq!(tls_socks.len(), 1, "one kTLS socket");
    assert_eq!(
        socks(&out, push_probe),
        tls_socks,
        "push on the kTLS socket"
    );
    let wire = report["wire_bytes"].as_u64().expect("wire_bytes");
    let records = report["records"].as_u64().expect("records");
    assert_eq!(
        out.bytes_done(push_probe, None),
        wire,
        "TCP push bytes == bytes on the wire"
    );
    assert_eq!(wire, N + TLS13_OVERHEAD * records);
    // One sendfile of N bytes closes a record every 16 KiB and once at the end.
    assert_eq!(records, N.div_ceil(RECORD), "records on the wire");
    // ...and kernel TLS counted exactly those: the record sequence number moved by that
    // much across the kTLS sends (no static function such as tls_push_record needed).
    let counted: u64 = ktls_sends(&out)
        .map(|e| {
            e["records"]
                .as_u64()
                .unwrap_or_else(|| panic!("no record count: {e}"))
        })
        .sum();
    assert_eq!(counted, records, "records counted by kernel TLS");
    // The summary says the same, classified.
    let c = &out.summary.as_ref().expect("summary")["classified"];
    assert_eq!(c["paths"]["ktls-sendfile"], N, "{c}");
    assert_eq!(c["ciphertext"], wire, "{c}");
    assert_eq!(c["records"], records, "{c}");
    assert_eq!(c["sendfile_bytes"], N, "{c}");
    // The pushes ran inside the kTLS send (or were flushed later by the kernel's tx
    // worker, which has no parent); some must be nested all the way to sendfile.
    let nested = out.of(push_probe).filter(|e| e["root"] == sendfile).count();
    assert!(nested > 0, "no TCP push nested under {sendfile}");
    for e in out.of(push_probe).filter(|e| e["pid"] == pid) {
        let parent = e["parent"].as_str().unwrap_or("");
        assert!(parent.starts_with("tls_sw_"), "push outside kTLS: {e}");
    }

    // 4. The trap: tcp_sendmsg never sees kTLS transmit.
    assert_eq!(
        out.of("tcp_sendmsg").count(),
        0,
        "tcp_sendmsg saw kTLS traffic"
    );
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_write_goes_through_tls_sw_sendmsg_without_splice() {
    require_root();
    if !needs_ktls("ktls_write_goes_through_tls_sw_sendmsg_without_splice") {
        return;
    }
    const N: u64 = 200_000;
    let (out, report, pid) = traced("ktls-write", N);
    assert_eq!(report["sent"], N);
    let calls: Vec<&Value> = out.of("tls_sw_sendmsg").collect();
    assert!(
        !calls.is_empty(),
        "no tls_sw_sendmsg: {}",
        out.stderr_text()
    );
    assert_eq!(out.bytes_done("tls_sw_sendmsg", Some(pid)), N);
    for e in &calls {
        assert!(!flags(e).contains(MSG_SPLICE_PAGES), "{e}");
        assert!(e["flags"].is_string(), "flags are read: {e}");
        assert!(e["parent"].is_null(), "not inside sendfile: {e}");
    }
    assert_eq!(out.of("do_sendfile").count(), 0);
    assert_eq!(out.of("sendfile64").count(), 0);
    assert_eq!(out.of("tls_sw_sendpage").count(), 0);
    let wire = report["wire_bytes"].as_u64().expect("wire_bytes");
    let (_, push_probe) = era_probes();
    assert_eq!(out.bytes_done(push_probe, None), wire);
    let counted: u64 = ktls_sends(&out).filter_map(|e| e["records"].as_u64()).sum();
    assert_eq!(counted, report["records"].as_u64().expect("records"));
    let c = &out.summary.as_ref().expect("summary")["classified"];
    assert_eq!(c["paths"]["ktls-write"], N, "{c}");
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn two_processes_traced_separately_get_exact_bytes_each() {
    require_root();
    if !needs_ktls("two_processes_traced_separately_get_exact_bytes_each") {
        return;
    }
    const A: u64 = 700_000;
    const B: u64 = 300_000;
    let mut wa = Workload::start("ktls-sendfile", A);
    let mut wb = Workload::start("ktls-sendfile", B);
    let (pa, pb) = (wa.pid, wb.pid);
    let ta = Trace::start(&["--backend", "kprobe", "--pid", &pa.to_string()]);
    let tb = Trace::start(&["--backend", "kprobe", "--pid", &pb.to_string()]);
    wa.go();
    wb.go();
    let ra = wa.finish();
    let rb = wb.finish();
    let oa = ta.wait();
    let ob = tb.wait();
    let (tls_probe, push_probe) = era_probes();
    for (out, me, other, n, report) in [(&oa, pa, pb, A, &ra), (&ob, pb, pa, B, &rb)] {
        assert!(out.status.success(), "{}", out.stderr_text());
        assert_eq!(out.bytes_done(sendfile_probe(out), None), n);
        assert_eq!(out.bytes_done(tls_probe, None), n);
        assert_eq!(
            out.bytes_done(push_probe, None),
            report["wire_bytes"].as_u64().unwrap_or(0)
        );
        assert!(
            out.events.iter().all(|e| e["pid"] != other),
            "saw the other process"
        );
        assert!(out.events.iter().any(|e| e["pid"] == me));
    }
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn tls_probes_attach_when_the_module_is_loaded_later() {
    require_root();
    if !needs_ktls("tls_probes_attach_when_the_module_is_loaded_later") {
        return;
    }
    // Unload tls (nothing else uses it between tests: they run one at a time).
    let rm = std::process::Command::new("rmmod")
        .arg("tls")
        .status()
        .expect("rmmod");
    assert!(rm.success(), "rmmod tls failed");
    assert!(!std::path::Path::new("/sys/module/tls").exists());
    let trace = Trace::start(&["--backend", "kprobe"]);
    let probe = std::process::Command::new("modprobe")
        .arg("tls")
        .status()
        .expect("modprobe");
    assert!(probe.success());
    // The tracer polls twice a second and then loads and attaches the tls programs, which
    // takes seconds in the emulator: wait until it says the era's probe is attached.
    let (tls_probe, _) = era_probes();
    trace.wait_for_stderr(
        &format!("attached {tls_probe}"),
        std::time::Duration::from_secs(60),
    );
    // ...and that it reads records, version and cipher from the module's BTF.
    trace.wait_for_stderr(
        "are read from the tls module's BTF",
        std::time::Duration::from_secs(60),
    );
    let mut w = Workload::start("ktls-sendfile", 100_000);
    w.go();
    w.finish();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = trace.stop();
    let text = out.stderr_text();
    assert!(text.contains("will be attached when it is"), "{text}");
    assert!(text.contains(&format!("attached {tls_probe}")), "{text}");
    assert_eq!(out.bytes_done(tls_probe, None), 100_000, "{text}");
    let counted: u64 = ktls_sends(&out).filter_map(|e| e["records"].as_u64()).sum();
    assert_eq!(counted, 100_000u64.div_ceil(RECORD), "{text}");
}

// ---- without kernel TLS: every kernel with kprobes, 5.10 included ----

#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn plain_sendfile_bytes_are_exact_at_sendfile_and_tcp() {
    require_root();
    const N: u64 = 700_000;
    let (out, report, pid) = traced("plain-sendfile", N);
    assert_eq!(report["wire_bytes"], N);
    let sendfile = sendfile_probe(&out);
    assert_eq!(
        out.bytes_done(sendfile, Some(pid)),
        N,
        "{}",
        out.stderr_text()
    );
    // Where the file's pages meet TCP: do_tcp_sendpages before 6.5, tcp_sendmsg with
    // MSG_SPLICE_PAGES after; either way inside sendfile.
    let tcp = if kernel_version() < (6, 5) {
        "do_tcp_sendpages"
    } else {
        "tcp_sendmsg"
    };
    let inside: u64 = out
        .of(tcp)
        .filter(|e| e["root"] == sendfile)
        .filter_map(|e| e["ret"].as_i64())
        .filter(|r| *r > 0)
        .sum::<i64>() as u64;
    assert_eq!(inside, N, "{tcp} bytes inside {sendfile}");
    let c = &out.summary.as_ref().expect("summary")["classified"];
    assert_eq!(c["paths"]["plain-sendfile"], N, "{c}");
    assert_eq!(c["ciphertext"], 0, "{c}");
    assert_eq!(c["sendfile_bytes"], N, "{c}");
}

#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn userspace_tls_is_recognised_at_tcp_sendmsg_with_exact_bytes() {
    require_root();
    const N: u64 = 300_000;
    let (out, report, pid) = traced("userspace-tls", N);
    let wire = report["wire_bytes"].as_u64().expect("wire_bytes");
    // Every write is one TLS record: its first bytes are a record header (17 03 03),
    // read from user memory through msghdr's iov_iter (5.10: `iov_iter.type`).
    let sends: Vec<&Value> = out.of("tcp_sendmsg").filter(|e| e["pid"] == pid).collect();
    assert_eq!(
        sends.len() as u64,
        report["records"].as_u64().expect("records")
    );
    for e in &sends {
        assert!(
            e["head"].as_str().is_some_and(|h| h.starts_with("170303")),
            "{e}"
        );
    }
    assert_eq!(out.bytes_done("tcp_sendmsg", Some(pid)), wire);
    let c = &out.summary.as_ref().expect("summary")["classified"];
    assert_eq!(c["paths"]["userspace-tls"], wire, "{c}");
    assert_eq!(c["paths"]["plain"], 0, "{c}");
}
