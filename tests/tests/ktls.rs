//! The kprobe + kernel TLS path, on real kTLS kernels: these run inside the QEMU guests
//! (6.1: tls_sw_sendpage + do_tcp_sendpages; 6.12: tls_sw_sendmsg with MSG_SPLICE_PAGES +
//! tcp_sendmsg_locked), started by `cargo xtask vm-test` with `--include-ignored`.
//! On the host they are ignored: its kernel has neither kprobes nor kTLS.

use std::collections::BTreeSet;

use ktls_trace_tests::{Trace, TraceOutput, Workload, kernel_version, require_root};
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

/// Runs one workload under `trace --pid` until it exits.
fn traced(mode: &str, bytes: u64) -> (TraceOutput, Value, u32) {
    let mut w = Workload::start(mode, bytes);
    let pid = w.pid;
    let trace = Trace::start(&["--backend", "kprobe", "--pid", &pid.to_string()]);
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
    let trace = Trace::start(&["--backend", "kprobe", "--duration", "0.2"]);
    let out = trace.wait();
    let attached = out
        .stderr
        .iter()
        .find_map(|l| l.strip_prefix("ktls-trace: attached "))
        .unwrap_or_else(|| panic!("no attached line: {}", out.stderr_text()))
        .to_string();
    let names: BTreeSet<&str> = attached.split(", ").collect();
    for p in [
        "do_sendfile",
        "tls_sw_sendmsg",
        "tcp_sendmsg",
        "tcp_sendmsg_locked",
    ] {
        assert!(names.contains(p), "{p} not attached: {attached}");
    }
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

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_sendfile_is_traced_from_sendfile_through_encryption_to_tcp() {
    require_root();
    // Not a multiple of the record size, so the last record is a short one.
    const N: u64 = 1_000_000;
    let (out, report, pid) = traced("ktls-sendfile", N);
    assert_eq!(report["sent"], N);
    let (tls_probe, push_probe) = era_probes();

    // 1. The file entered the kernel through do_sendfile.
    assert_eq!(
        out.bytes_done("do_sendfile", Some(pid)),
        N,
        "{}",
        out.stderr_text()
    );

    // 2. Exactly N plaintext bytes reached kernel TLS, all nested under do_sendfile.
    let tls: Vec<&Value> = out.of(tls_probe).collect();
    assert!(!tls.is_empty(), "no {tls_probe} events");
    assert_eq!(out.bytes_done(tls_probe, Some(pid)), N);
    for e in &tls {
        assert_eq!(e["parent"], "do_sendfile", "{e}");
        assert_eq!(e["pid"], pid);
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
    // ...and each of them was encrypted and pushed by one tls_push_record call.
    let pushed: Vec<&Value> = out.of("tls_push_record").collect();
    assert_eq!(
        pushed.len() as u64,
        records,
        "one tls_push_record per record"
    );
    for e in &pushed {
        assert_eq!(
            e["sock"].to_string(),
            *tls_socks.iter().next().unwrap_or(&String::new())
        );
        assert!(e["latency_ns"].as_u64().is_some_and(|l| l > 0), "{e}");
    }
    // The pushes ran inside the kTLS send (or were flushed later by the kernel's tx
    // worker, which has no parent); some must be nested all the way to do_sendfile.
    let nested = out
        .of(push_probe)
        .filter(|e| e["root"] == "do_sendfile")
        .count();
    assert!(nested > 0, "no TCP push nested under do_sendfile");
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
    assert_eq!(out.of("tls_sw_sendpage").count(), 0);
    let wire = report["wire_bytes"].as_u64().expect("wire_bytes");
    let (_, push_probe) = era_probes();
    assert_eq!(out.bytes_done(push_probe, None), wire);
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn two_processes_traced_separately_get_exact_bytes_each() {
    require_root();
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
        assert_eq!(out.bytes_done("do_sendfile", None), n);
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
    trace.wait_for_stderr(
        "attached tls_push_record",
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
}
