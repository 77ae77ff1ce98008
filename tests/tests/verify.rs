//! `ktls-trace verify`: on the host (no kprobes, no kTLS) it must refuse with exit 2 and
//! the reason; inside the kTLS guests it must prove the zero-copy path and classify the
//! other three load modes correctly.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ktls_trace_tests::{bin, has_kprobes, needs_ktls, require_root, run_ktls_trace};
use serde_json::Value;

fn verify(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run_ktls_trace(&all);
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (code, v, stderr)
}

fn stage(v: &Value, n: usize) -> (bool, String) {
    let s = &v["stages"][n - 1];
    (
        s["pass"].as_bool().unwrap_or(false),
        s["detail"].as_str().unwrap_or("").to_string(),
    )
}

/// Where verify cannot work it exits 2 with one line saying why: on the host because
/// there are no kprobes; everywhere for a user without tracing privileges.
#[test]
fn where_verify_is_impossible_it_exits_2_with_the_reason() {
    require_root();
    if !has_kprobes() {
        let (code, stdout, stderr) = run_ktls_trace(&["verify"]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("needs kprobes") && stderr.contains("CONFIG_KPROBES"),
            "{stderr}"
        );
    }
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(ktls_trace_tests::bin("ktls-trace"))
        .arg("verify")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}

/// Bad numbers are the user's to fix on any machine: said before anything is checked or
/// started, exit 2.
#[test]
fn zero_requests_or_connections_are_refused_first() {
    for (flag, value) in [("--connections", "0"), ("--requests", "0")] {
        let (code, stdout, stderr) = run_ktls_trace(&["verify", flag, value]);
        assert_eq!(code, 2, "{flag}: {stderr}");
        assert!(stdout.is_empty(), "{flag}: {stdout}");
        assert!(
            stderr.contains(&format!("{flag} must be at least 1")),
            "{flag}: {stderr}"
        );
    }
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_sendfile_passes_all_five_stages() {
    require_root();
    if !needs_ktls("ktls_sendfile_passes_all_five_stages") {
        return;
    }
    let (code, v, stderr) = verify(&["--requests", "3", "--file-size", "1M"]);
    assert_eq!(code, 0, "{v:#}\n{stderr}");
    assert_eq!(v["verdict"], "pass");
    assert_eq!(v["path"], "kTLS sendfile (zero-copy)");
    for n in 1..=5 {
        assert!(stage(&v, n).0, "stage {n}: {v:#}");
    }
    // Exact numbers: 3 x 1 MiB through sendfile and into kTLS on the splice path.
    let n = &v["numbers"];
    assert_eq!(n["sendfile_bytes"], 3 * 1024 * 1024);
    assert_eq!(n["splice_plaintext_bytes"], 3 * 1024 * 1024);
    assert_eq!(n["user_tcp_payload_bytes"], 0);
    assert_eq!(n["record_overhead"], 22, "TLS 1.3 by default");
    // What kernel TLS reports for the socket is what the load negotiated.
    let kernel_name = match v["cipher"].as_str() {
        Some("aes-128-gcm") => "AES-GCM-128",
        Some("aes-256-gcm") => "AES-GCM-256",
        Some("chacha20-poly1305") => "CHACHA20-POLY1305",
        other => panic!("unexpected cipher {other:?}: {v:#}"),
    };
    assert_eq!(n["kernel_tls"], format!("TLS 1.3 {kernel_name}"), "{v:#}");
    assert_eq!(n["records_from"], "sequence number", "counted, not derived");
    let records = n["records"].as_u64().unwrap_or(0);
    // 64 records per MiB body, plus the response heads and close_notify alerts.
    assert!(
        (3 * 64..=3 * 64 + 8).contains(&records),
        "{records} records for 3 MiB"
    );
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn tls12_record_overhead_is_29_bytes() {
    require_root();
    if !needs_ktls("tls12_record_overhead_is_29_bytes") {
        return;
    }
    let (code, v, stderr) = verify(&[
        "--requests",
        "1",
        "--file-size",
        "512K",
        "--tls",
        "1.2",
        "--cipher",
        "aes-256-gcm",
    ]);
    assert_eq!(code, 0, "{v:#}\n{stderr}");
    assert_eq!(v["numbers"]["record_overhead"], 29);
    assert_eq!(v["tls_version"], "1.2");
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_write_is_classified_and_fails_the_copy_stages() {
    require_root();
    if !needs_ktls("ktls_write_is_classified_and_fails_the_copy_stages") {
        return;
    }
    let (code, v, stderr) = verify(&[
        "--mode",
        "ktls-write",
        "--requests",
        "2",
        "--file-size",
        "256K",
    ]);
    assert_eq!(code, 1, "{v:#}\n{stderr}");
    assert_eq!(v["path"], "kTLS write");
    assert_eq!(v["path_id"], "ktls-write");
    assert!(
        !stage(&v, 1).0 && !stage(&v, 2).0 && !stage(&v, 4).0,
        "{v:#}"
    );
    assert!(stage(&v, 3).0, "ciphertext still adds up: {v:#}");
    assert!(stage(&v, 5).0);
    assert!(stage(&v, 2).1.contains("write()"), "{v:#}");
}

#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn userspace_tls_is_classified_with_the_reason() {
    require_root();
    let (code, v, stderr) = verify(&[
        "--mode",
        "userspace-tls",
        "--requests",
        "2",
        "--file-size",
        "256K",
    ]);
    assert_eq!(code, 1, "{v:#}\n{stderr}");
    assert_eq!(v["path"], "user-space TLS");
    assert!(
        stage(&v, 2).1.contains("tcp_sendmsg from user space"),
        "{v:#}"
    );
    assert!(stage(&v, 5).0);
    assert!(v["numbers"]["user_tcp_payload_bytes"].as_u64().unwrap_or(0) >= 2 * 256 * 1024);
}

#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn plain_sendfile_is_classified_as_unencrypted() {
    require_root();
    let (code, v, stderr) = verify(&[
        "--mode",
        "plain-sendfile",
        "--requests",
        "2",
        "--file-size",
        "256K",
    ]);
    assert_eq!(code, 1, "{v:#}\n{stderr}");
    assert_eq!(v["path"], "plain sendfile");
    assert!(stage(&v, 1).0, "sendfile is used: {v:#}");
    assert!(!stage(&v, 2).0 && !stage(&v, 3).0);
    assert_eq!(v["numbers"]["sendfile_bytes"], 2 * 256 * 1024);
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn corruption_fails_stage_5() {
    require_root();
    if !needs_ktls("corruption_fails_stage_5") {
        return;
    }
    let (code, v, stderr) = verify(&[
        "--mode",
        "ktls-write",
        "--requests",
        "1",
        "--file-size",
        "64K",
        "--corrupt-byte",
        "1000",
    ]);
    assert_eq!(code, 1, "{v:#}\n{stderr}");
    let (ok, detail) = stage(&v, 5);
    assert!(!ok, "{v:#}");
    assert!(
        detail.contains("mismatch") || detail.contains("failed"),
        "{detail}"
    );
}

/// A failed client ends verify at once, with the client's reason, instead of leaving
/// verify to wait for a server that waits for requests that never come (10 minutes):
/// here the server hangs up on every request (test-only fault injection).
#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn a_failed_client_ends_verify_at_once_with_the_reason() {
    require_root();
    let started = Instant::now();
    let (code, v, stderr) = verify(&[
        "--mode",
        "plain-sendfile",
        "--requests",
        "2",
        "--file-size",
        "64K",
        "--hang-up",
    ]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{v:#}\n{stderr}");
    assert!(
        took < Duration::from_secs(120),
        "verify took {took:?}: {stderr}"
    );
    let stages = v["stages"].as_array().expect("stages");
    assert!(
        stages.iter().any(|s| s["pass"] == false
            && s["detail"]
                .as_str()
                .unwrap_or("")
                .contains("closed the connection before answering")),
        "no failed stage names the client's error: {v:#}"
    );
}

/// `timeout verify` (SIGTERM) must not leave the load server running: verify stops it on
/// every way out.
#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn sigterm_stops_verify_and_its_load_server() {
    end_verify_with(libc::SIGTERM);
}

/// SIGKILL runs no code of verify's: the kernel stops the server (PR_SET_PDEATHSIG).
#[test]
#[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
fn sigkill_of_verify_stops_its_load_server() {
    end_verify_with(libc::SIGKILL);
}

/// Sends `signal` to a running verify; it must end (SIGTERM: exit 1, saying it was
/// interrupted) and its load server must be gone within 10 s.
fn end_verify_with(signal: i32) {
    require_root();
    let mut child = Command::new(bin("ktls-trace"))
        .args([
            "verify",
            "--mode",
            "plain-sendfile",
            "--requests",
            "100000",
            "--file-size",
            "1M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn verify");
    let err = BufReader::new(child.stderr.take().expect("stderr"));
    // "ktls-trace: verify: tracing the plain-sendfile server (pid N) on ..."
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in err.lines().map_while(Result::ok) {
            if let Some(rest) = line.split_once("server (pid ").map(|(_, r)| r) {
                let _ = tx.send(rest.split(')').next().and_then(|p| p.parse::<i32>().ok()));
            }
            seen.push(line);
        }
        seen
    });
    let server = rx
        .recv_timeout(Duration::from_secs(120))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no server pid announced"));
    assert!(std::path::Path::new(&format!("/proc/{server}")).exists());
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill with a valid signal number on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "verify did not stop on {signal}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = reader.join().unwrap_or_default().join("\n");
    if signal == libc::SIGTERM {
        assert_eq!(
            status.code(),
            Some(1),
            "an interrupted proof is a failure: {status}\n{said}"
        );
        assert!(said.contains("interrupted"), "{said}");
    }
    // The server is gone (a zombie reaped by init at the latest: not running).
    let deadline = Instant::now() + Duration::from_secs(10);
    while ktls_trace_tests::process_running(server as u32) {
        assert!(
            Instant::now() < deadline,
            "the load server {server} outlived verify ({signal})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
