//! `ktls-trace export` on its own (Prometheus itself scrapes it in tests/tests/export.rs):
//! usage errors, exact payload per process, SIGTERM, hostile clients, and the tls module
//! loading while it runs. On the host these run in the tracepoint fallback; the
//! `#[ignore]`d one needs kprobes and kernel TLS and runs in the QEMU guests.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use ktls_trace_tests::{
    Workload,
    exporter::{Exporter, value},
    needs_ktls, require_root, run_ktls_trace,
};

#[test]
fn usage_errors_exit_2_with_one_line_and_nothing_attached() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    for (args, says) in [
        (vec!["--listen", listen.as_str()], "the port is in use"),
        (vec!["--listen", "localhost:9464"], "invalid socket address"),
        (
            vec!["--listen", "192.0.2.1:9464"],
            "no interface of this machine",
        ),
        (vec!["--interval", "0"], "--interval must be between"),
        (vec!["--max-series", "0"], "--max-series"),
    ] {
        let mut full = vec!["export"];
        full.extend(args.iter().copied());
        let (code, out, err) = run_ktls_trace(&full);
        assert_eq!(code, 2, "{full:?}: {err}");
        assert!(err.contains(says), "{full:?}: {err}");
        assert!(out.is_empty(), "{full:?}: {out}");
        assert!(!err.contains("panicked"), "{err}");
        // Nothing was attached: no start-up lines before the error.
        assert!(!err.contains("attached"), "{full:?}: {err}");
    }
    // A PID that does not exist: one line, after the port (free) was taken and released.
    let (code, _, err) = run_ktls_trace(&["export", "--listen", "127.0.0.1:0", "--pid", "4194305"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no process with PID 4194305"), "{err}");
}

#[test]
fn payload_per_process_is_exact_and_sigterm_ends_it_cleanly() {
    require_root();
    const N: u64 = 3_000_000;
    let e = Exporter::start(&["--by", "pid"]);
    let body = e.scrape();
    assert!(
        body.contains("# TYPE ktls_trace_build_info gauge"),
        "{body}"
    );
    let release = ktls_trace_tests::release();
    assert!(
        body.contains(&format!("kernel_release=\"{release}\"")),
        "{body}"
    );
    let mut w = Workload::start("plain-sendfile", N);
    let pid = w.pid;
    w.go();
    let report = w.finish();
    assert_eq!(report["wire_bytes"], N);
    let series = format!(
        "ktls_trace_payload_bytes_total{{comm=\"ktls-workload\",pid=\"{pid}\",path=\"plain_sendfile\"}}"
    );
    let body = e.wait_for(&series, |v| v >= N as f64);
    assert_eq!(value(&body, &series), Some(N as f64), "{body}");
    let calls = format!("ktls_trace_sendfile_calls_total{{comm=\"ktls-workload\",pid=\"{pid}\"}}");
    assert!(value(&body, &calls).is_some_and(|c| c >= 1.0), "{body}");
    // Counters only grow: a later scrape is never lower.
    let again = e.scrape();
    assert_eq!(value(&again, &series), Some(N as f64));
    let port = e.port;
    let (code, err) = e.stop();
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The port is free again: the exporter is gone, probes and all.
    TcpListener::bind(("127.0.0.1", port)).expect("port released");
}

#[test]
fn slow_and_hostile_clients_neither_exhaust_it_nor_stop_scrapes() {
    require_root();
    let e = Exporter::start(&[]);
    e.scrape();
    let rss_before = e.rss_kib();
    // Twice as many silent connections as it serves at once, and one that sends its
    // headers a byte at a time and never ends them.
    let silent: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", e.port)).expect("connect"))
        .collect();
    let mut slow = TcpStream::connect(("127.0.0.1", e.port)).expect("connect");
    let _ = slow.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
    // Headers far beyond the limit: refused without buffering them all.
    let mut huge = TcpStream::connect(("127.0.0.1", e.port)).expect("connect");
    huge.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = huge.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    let chunk = vec![b'a'; 64 << 10];
    for _ in 0..16 {
        if huge.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a 1 MiB header got: {answer:?}"
    );
    // Silent and slow clients are cut off after the header timeout (10 s); scrapes then
    // succeed again although the attackers never closed their ends.
    std::thread::sleep(Duration::from_secs(12));
    let body = e.scrape();
    assert!(body.contains("ktls_trace_calls_total"), "{body}");
    let rss_after = e.rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(silent);
    drop(slow);
    let (code, err) = e.stop();
    assert_eq!(code, 0, "{err}");
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_probes_attach_when_the_tls_module_loads_while_exporting() {
    require_root();
    if !needs_ktls("ktls_probes_attach_when_the_tls_module_loads_while_exporting") {
        return;
    }
    const N: u64 = 1_000_000;
    // Unload tls (tests run one at a time in the guests).
    let rm = Command::new("rmmod").arg("tls").status().expect("rmmod");
    assert!(rm.success(), "rmmod tls failed");
    let e = Exporter::start(&["--by", "pid"]);
    let tls_probe = if ktls_trace_tests::kernel_version() < (6, 5) {
        "tls_sw_sendpage"
    } else {
        "tls_sw_sendmsg"
    };
    let state = |s: &str| format!("ktls_trace_probe_state{{probe=\"{tls_probe}\",state=\"{s}\"}}");
    let body = e.scrape();
    assert_eq!(value(&body, &state("waiting")), Some(1.0), "{body}");
    assert_eq!(
        value(&body, "ktls_trace_tls_module_loaded"),
        Some(0.0),
        "{body}"
    );
    assert!(!body.contains("ktls_trace_kernel_tls_sessions"), "{body}");
    let probe = Command::new("modprobe")
        .arg("tls")
        .status()
        .expect("modprobe");
    assert!(probe.success());
    e.wait_for(&state("attached"), |v| v == 1.0);
    let mut w = Workload::start("ktls-sendfile", N);
    let pid = w.pid;
    w.go();
    let report = w.finish();
    assert_eq!(report["sent"], N);
    let series = format!(
        "ktls_trace_payload_bytes_total{{comm=\"ktls-workload\",pid=\"{pid}\",path=\"ktls_sendfile\"}}"
    );
    let body = e.wait_for(&series, |v| v >= N as f64);
    assert_eq!(value(&body, &series), Some(N as f64), "{body}");
    assert_eq!(value(&body, "ktls_trace_tls_module_loaded"), Some(1.0));
    let opened = "ktls_trace_kernel_tls_sessions_opened_total{direction=\"tx\",mode=\"sw\"}";
    assert!(value(&body, opened).is_some_and(|v| v >= 1.0), "{body}");
    let records = format!("ktls_trace_ktls_records_total{{comm=\"ktls-workload\",pid=\"{pid}\"}}");
    assert_eq!(value(&body, &records), report["records"].as_f64(), "{body}");
    let (code, err) = e.stop();
    assert_eq!(code, 0, "{err}");
}
