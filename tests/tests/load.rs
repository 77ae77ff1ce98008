//! `ktls-trace load`: the workload generator, run as the binary.
//!
//! On the build machine (no kernel TLS) the user-space paths must work and the kernel-TLS
//! modes must fail with one clear line. The `#[ignore]`d tests need kernel TLS and run in
//! the QEMU guests (`cargo xtask vm-test`, with --include-ignored); they check the
//! negotiated version/cipher and the kernel's own TLS counters, so they cannot pass
//! without the kernel really doing the encryption.

use std::{
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use ktls_trace_tests::load_server::{LoadServer, listen_addr};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The directory holding `ktls-trace`: $KTLS_TRACE_BIN_DIR, else target/<profile>/ (test
/// executables live in target/<profile>/deps/).
fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KTLS_TRACE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the test executable has no grandparent directory")
}

fn ktls_trace() -> PathBuf {
    let p = bin_dir().join("ktls-trace");
    assert!(
        p.exists(),
        "{} not found: build it first (cargo build -p ktls-trace)",
        p.display()
    );
    p
}

/// Runs `ktls-trace load ARGS` to completion.
fn load(args: &[&str]) -> Output {
    let out = Command::new(ktls_trace())
        .arg("load")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ktls-trace");
    eprintln!(
        "$ ktls-trace load {}\n-> {:?}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON object on stdout: {text:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the failure is one clean line on stderr with this exit code.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) -> String {
    assert_eq!(out.status.code(), Some(code), "exit code");
    let err = stderr_text(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got {err:?}");
    let line = lines[0];
    assert!(line.contains(needle), "{line:?} should mention {needle:?}");
    assert!(!line.contains("os error"), "raw errno in {line:?}");
    assert!(!line.contains("panicked"), "{line:?}");
    line.to_string()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Kernel TLS exists on this kernel. `ktls-trace load` enables the module by itself when
/// it can, so look after a run as well as before.
fn kernel_has_tls() -> bool {
    Path::new("/proc/net/tls_stat").exists()
}

/// One counter of /proc/net/tls_stat.
fn tls_stat(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/tls_stat").expect("/proc/net/tls_stat");
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name)).then(|| it.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{name} not in /proc/net/tls_stat:\n{text}"))
}

/// Checks a combined (`role: both`) report of a successful run of `requests` requests of
/// a `size`-byte file.
fn assert_combined_ok(rep: &Value, mode: &str, requests: u64, size: u64) {
    assert_eq!(rep["role"], "both");
    assert_eq!(rep["mode"], mode);
    assert_eq!(u(rep, "errors"), 0, "{rep}");
    assert_eq!(rep["verified"], true, "{rep}");
    let s = &rep["server"];
    let c = &rep["client"];
    assert_eq!(u(s, "file_size"), size);
    assert_eq!(u(s, "requests"), requests);
    assert_eq!(u(c, "requests"), requests);
    assert_eq!(u(s, "body_bytes"), requests * size, "server body bytes");
    assert_eq!(u(c, "body_bytes"), requests * size, "client body bytes");
    assert_eq!(u(rep, "body_bytes"), requests * size);
    assert_eq!(u(s, "header_bytes"), u(c, "header_bytes"));
    assert!(u(s, "header_bytes") > 0);
    assert_eq!(c["check"], "sha256");
    assert_eq!(c["verified"], true);
    assert_eq!(u(s, "connections"), u(c, "connections"));
    assert!(s["cpu"]["user_s"].is_number() && s["cpu"]["sys_s"].is_number());
    assert_eq!(s["cpu"]["scope"], "server-thread");
}

fn write_test_file(name: &str, size: usize) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&path, data).expect("writing the test file");
    path
}

// ---------------------------------------------------------------- build machine

#[test]
fn userspace_tls_counts_exact_bytes_and_verifies() {
    let out = load(&[
        "--mode",
        "userspace-tls",
        "--requests",
        "6",
        "--connections",
        "2",
        "--file-size",
        "1M",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let rep = stdout_json(&out);
    assert_combined_ok(&rep, "userspace-tls", 6, MIB);
    assert_eq!(rep["server"]["kernel_tls"], false);
    assert_eq!(rep["server"]["tls_version"], "1.3");
    assert_eq!(u(&rep["server"], "connections"), 2);
}

/// `--requests-per-connection 1`: every request on a fresh connection and handshake (the
/// churn the soak test uses); 3 per connection: every third request closes.
#[test]
fn requests_per_connection_churns_connections() {
    for (per, connections) in [("1", 7), ("3", 3)] {
        let out = load(&[
            "--mode",
            "userspace-tls",
            "--requests",
            "7",
            "--connections",
            "2",
            "--requests-per-connection",
            per,
            "--file-size",
            "64K",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_text(&out));
        let rep = stdout_json(&out);
        assert_combined_ok(&rep, "userspace-tls", 7, 64 * 1024);
        let c = &rep["client"];
        assert_eq!(u(c, "connections"), connections, "per {per}: {rep}");
        assert_eq!(
            u(&rep["client"]["negotiated"][0], "connections"),
            connections
        );
    }
    let out = load(&["--server-only", "--requests-per-connection", "1"]);
    assert_one_line_error(&out, 2, "client options (not for --server-only)");
}

#[test]
fn userspace_tls_honours_version_and_cipher() {
    let out = load(&[
        "--mode",
        "userspace-tls",
        "--tls",
        "1.2",
        "--cipher",
        "chacha20-poly1305",
        "--requests",
        "2",
        "--file-size",
        "256K",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let rep = stdout_json(&out);
    assert_combined_ok(&rep, "userspace-tls", 2, 256 * 1024);
    for side in ["server", "client"] {
        assert_eq!(rep[side]["tls_version"], "1.2");
        assert_eq!(rep[side]["cipher"], "chacha20-poly1305");
    }
}

#[test]
fn plain_sendfile_counts_exact_bytes_and_verifies() {
    let out = load(&[
        "--mode",
        "plain-sendfile",
        "--requests",
        "5",
        "--file-size",
        "1M",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let rep = stdout_json(&out);
    assert_combined_ok(&rep, "plain-sendfile", 5, MIB);
    assert!(rep["server"]["tls_version"].is_null());
    assert_eq!(rep["client"]["tls"], false);
}

#[test]
fn served_file_of_the_user_is_checked_byte_for_byte() {
    let size = 300_001;
    let path = write_test_file("ktls-load-user-file", size);
    let p = path.to_str().expect("utf-8 path");
    let out = load(&[
        "--mode",
        "plain-sendfile",
        "--file",
        p,
        "--requests",
        "3",
        "--json",
    ]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(0));
    let rep = stdout_json(&out);
    assert_combined_ok(&rep, "plain-sendfile", 3, size as u64);
    assert_eq!(rep["server"]["generated_file"], false);
}

/// Without kernel TLS the ktls modes stop at once with the way out; with it they work.
#[test]
fn ktls_modes_fail_with_one_clear_line_without_kernel_tls() {
    for mode in ["ktls-sendfile", "ktls-write"] {
        let out = load(&["--mode", mode, "--requests", "1", "--file-size", "64K"]);
        if kernel_has_tls() {
            assert_eq!(out.status.code(), Some(0), "{mode} on a kTLS kernel");
            continue;
        }
        let line = assert_one_line_error(&out, 1, "kernel TLS is not available");
        for hint in [
            "CONFIG_TLS",
            "modprobe tls",
            "--mode userspace-tls",
            "plain-sendfile",
        ] {
            assert!(line.contains(hint), "{line:?} lacks {hint:?}");
        }
        // Also alone, before listening: no ready line.
        let out = load(&["--mode", mode, "--server-only", "--listen", "127.0.0.1:0"]);
        assert_one_line_error(&out, 1, "kernel TLS is not available");
        assert!(out.stdout.is_empty(), "no ready line expected");
    }
}

#[test]
fn busy_port_is_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = load(&[
        "--server-only",
        "--mode",
        "userspace-tls",
        "--listen",
        &addr,
        "--requests",
        "1",
    ]);
    let line = assert_one_line_error(&out, 1, "address already in use");
    assert!(line.contains(&addr), "{line}");
}

#[test]
fn unreadable_files_are_one_line() {
    let out = load(&[
        "--mode",
        "userspace-tls",
        "--file",
        "/nonexistent/ktls-load",
        "--requests",
        "1",
    ]);
    assert_one_line_error(
        &out,
        1,
        "cannot read --file /nonexistent/ktls-load: no such file",
    );
    let out = load(&["--mode", "plain-sendfile", "--file", "/", "--requests", "1"]);
    assert_one_line_error(&out, 1, "not a regular file");
    // A FIFO would block open() until a writer comes: refused before it is opened.
    let fifo = std::env::temp_dir().join(format!("ktls-load-fifo-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(fifo.clone());
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: mkfifo reads the NUL-terminated path it is given.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo = fifo.to_str().expect("utf-8 path");
    let out = load(&[
        "--mode",
        "plain-sendfile",
        "--file",
        fifo,
        "--requests",
        "1",
    ]);
    assert_one_line_error(&out, 1, "not a regular file");
    let out = load(&[
        "--mode",
        "userspace-tls",
        "--cert",
        "/nonexistent/cert.pem",
        "--key",
        "/nonexistent/key.pem",
        "--requests",
        "1",
    ]);
    assert_one_line_error(&out, 1, "cannot read --cert");
}

#[test]
fn usage_mistakes_exit_2() {
    let out = load(&[
        "--mode",
        "plain-sendfile",
        "--tls",
        "1.2",
        "--requests",
        "1",
    ]);
    assert_one_line_error(&out, 2, "need a TLS mode");
    let out = load(&[
        "--mode",
        "plain-sendfile",
        "--corrupt-byte",
        "3",
        "--requests",
        "1",
    ]);
    assert_one_line_error(&out, 2, "--corrupt-byte");
    let out = load(&["--connections", "0", "--mode", "userspace-tls"]);
    assert_one_line_error(&out, 2, "--connections");
    let out = load(&["--cipher", "rc4", "--mode", "userspace-tls"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_text(&out).contains("possible values"));
    let out = load(&["--client-only", "--connect", "localhost", "--requests", "1"]);
    assert_one_line_error(&out, 2, "HOST:PORT");
}

/// The test-only fault injection proves the client checks content, not just lengths.
#[test]
fn corruption_is_caught() {
    let out = load(&[
        "--mode",
        "userspace-tls",
        "--corrupt-byte",
        "123457",
        "--file-size",
        "512K",
        "--requests",
        "2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let rep = stdout_json(&out);
    assert_eq!(rep["verified"], false);
    assert_eq!(rep["client"]["verified"], false);
    assert!(u(&rep["client"], "errors") >= 1);
    let msg = rep["client"]["error_messages"][0]
        .as_str()
        .expect("message");
    assert!(msg.contains("content mismatch"), "{msg}");
    assert!(msg.contains("connection 1"), "{msg}");
    // Every byte arrived: only the content differs.
    assert_eq!(u(&rep["client"], "body_bytes"), 512 * 1024);
    let err = stderr_text(&out);
    assert!(err.contains("content mismatch"), "{err}");
}

/// Server and client as separate processes (how `verify` runs them): ready line, exact
/// counts on both sides, the client checks against the generated pattern.
/// A `--server-only` server of one request of a generated file of `size`, plus `extra`
/// options; and its address.
fn serve_one(mode: &str, size: &str, extra: &[&str]) -> (LoadServer, String) {
    let mut args = vec![
        "--mode",
        mode,
        "--listen",
        "127.0.0.1:0",
        "--requests",
        "1",
        "--file-size",
        size,
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut server = LoadServer::start(&args);
    let addr = listen_addr(&server.ready());
    (server, addr)
}

/// The built-in client fetches that one request; then the server must have served it
/// without an error, with `strays` stray connections. Returns its report.
fn served_one_despite_strays(
    server: LoadServer,
    mode: &str,
    addr: &str,
    size: &str,
    strays: u64,
) -> Value {
    let out = load(&[
        "--client-only",
        "--mode",
        mode,
        "--connect",
        addr,
        "--requests",
        "1",
        "--file-size",
        size,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_text(&out));
    let (code, rep, err) = server.finish(60);
    assert_eq!(
        code,
        Some(0),
        "stray connections are not errors: {err}\n{rep}"
    );
    assert_eq!(u(&rep, "requests"), 1, "{rep}");
    assert_eq!(u(&rep, "errors"), 0, "{rep}");
    assert_eq!(u(&rep, "stray_connections"), strays, "{rep}");
    rep
}

/// Connections that never make a valid request (connect-and-close, a health check, a
/// failed handshake, a malformed request) are counted apart and do not fail a
/// `--server-only` run; the real request is served.
#[test]
fn stray_connections_are_counted_apart_and_do_not_fail_the_server() {
    use std::io::Write as _;
    let (server, addr) = serve_one("userspace-tls", "64K", &[]);
    // Connect and close; a plain-text request to the TLS port.
    drop(std::net::TcpStream::connect(&addr).expect("connect"));
    let mut plain = std::net::TcpStream::connect(&addr).expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    drop(plain);
    // Let the server see both end before the real request ends the run.
    std::thread::sleep(Duration::from_millis(300));
    let rep = served_one_despite_strays(server, "userspace-tls", &addr, "64K", 2);
    assert_eq!(u(&rep, "connections"), 3, "{rep}");
}

/// A client that asks and then never reads holds its request only until the send timeout:
/// the connection is dropped (a stray, not an error), the request goes back to the budget,
/// and the next client gets it.
#[test]
fn a_client_that_stops_reading_cannot_hold_the_server() {
    use std::io::Write as _;
    let (server, addr) = serve_one("plain-sendfile", "32M", &["--send-timeout", "2"]);
    // 32 MiB cannot fit in loopback's socket buffers: the response stalls.
    let mut stalled = std::net::TcpStream::connect(&addr).expect("connect");
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    std::thread::sleep(Duration::from_secs(4));
    served_one_despite_strays(server, "plain-sendfile", &addr, "32M", 1);
    drop(stalled);
}

/// Connections beyond --max-connections are closed at once (stray, not errors); once
/// one goes, the next client is served.
#[test]
fn connections_beyond_the_cap_are_closed_at_once() {
    use std::io::Read as _;
    let (server, addr) = serve_one("plain-sendfile", "64K", &["--max-connections", "1"]);
    let first = std::net::TcpStream::connect(&addr).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    let mut second = std::net::TcpStream::connect(&addr).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut b = [0u8; 1];
    assert_eq!(second.read(&mut b).expect("closed, not timed out"), 0);
    drop(first);
    std::thread::sleep(Duration::from_millis(500));
    served_one_despite_strays(server, "plain-sendfile", &addr, "64K", 1);
}

#[test]
fn server_only_and_client_only_agree() {
    let mut server = LoadServer::start(&[
        "--mode",
        "userspace-tls",
        "--listen",
        "127.0.0.1:0",
        "--requests",
        "4",
        "--file-size",
        "1M",
        "--json",
    ]);
    let ready = server.ready();
    assert_eq!(ready["mode"], "userspace-tls");
    assert_eq!(u(&ready, "file_size"), MIB);
    assert_eq!(u(&ready, "pid"), server.pid() as u64);
    let addr = listen_addr(&ready);
    let out = load(&[
        "--client-only",
        "--mode",
        "userspace-tls",
        "--connect",
        &addr,
        "--connections",
        "2",
        "--requests",
        "4",
        "--file-size",
        "1M",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let client = stdout_json(&out);
    assert_eq!(client["role"], "client");
    assert_eq!(client["verified"], true);
    assert_eq!(client["check"], "sha256");
    assert_eq!(u(&client, "requests"), 4);
    assert_eq!(u(&client, "body_bytes"), 4 * MIB);
    // Both connections are opened even if the first could serve all four requests alone.
    assert_eq!(u(&client, "connections"), 2);
    let (code, rep, _) = server.finish(60);
    assert_eq!(code, Some(0));
    assert_eq!(rep["role"], "server");
    assert_eq!(u(&rep, "requests"), 4);
    assert_eq!(u(&rep, "body_bytes"), 4 * MIB);
    assert_eq!(u(&rep, "header_bytes"), u(&client, "header_bytes"));
    assert_eq!(u(&rep, "connections"), 2);
    assert_eq!(u(&rep, "errors"), 0);
    assert_eq!(rep["tls_version"], client["tls_version"]);
    assert_eq!(rep["cipher"], client["cipher"]);
    // The generated file is gone once the server has exited.
    let file = ready["file"].as_str().expect("file");
    assert!(!Path::new(file).exists(), "{file} left behind");
}

/// A client without the file still checks the content against the server's header.
#[test]
fn client_only_uses_the_server_hash_when_it_has_no_file() {
    let mut server = LoadServer::start(&[
        "--mode",
        "plain-sendfile",
        "--listen",
        "127.0.0.1:0",
        "--requests",
        "1",
        "--file-size",
        "100K",
        "--json",
    ]);
    let addr = listen_addr(&server.ready());
    let out = load(&[
        "--client-only",
        "--mode",
        "plain-sendfile",
        "--connect",
        &addr,
        "--requests",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let client = stdout_json(&out);
    assert_eq!(client["check"], "sha256-server-header");
    assert_eq!(client["verified"], true);
    assert_eq!(u(&client, "body_bytes"), 100 * 1024);
    let (code, _, _) = server.finish(60);
    assert_eq!(code, Some(0));
}

/// SIGTERM stops the server cleanly: exit 0, a report, the generated file removed.
#[test]
fn sigterm_stops_the_server_with_a_report() {
    let mut server = LoadServer::start(&[
        "--mode",
        "userspace-tls",
        "--listen",
        "127.0.0.1:0",
        "--json",
    ]);
    let ready = server.ready();
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    let rc = unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    assert_eq!(rc, 0);
    let (code, rep, _) = server.finish(30);
    assert_eq!(code, Some(0));
    assert_eq!(u(&rep, "requests"), 0);
    assert_eq!(rep["mode"], "userspace-tls");
    let file = ready["file"].as_str().expect("file");
    assert!(!Path::new(file).exists(), "{file} left behind");
}

/// Real TLS clients fetch byte-exact from the server over TLS 1.2 and 1.3: Debian's curl
/// and openssl s_client, which the guest image carries (`cargo xtask setup` installs them
/// on the host, the initramfs copies them). On a kTLS kernel the server runs
/// ktls-sendfile and must have put each connection into kernel TLS at the version the
/// client asked for; elsewhere it runs userspace-tls.
#[test]
fn real_tls_clients_fetch_over_tls12_and_tls13() {
    let size = 200_000;
    let path = write_test_file("ktls-load-curl", size);
    let p = path.to_str().expect("utf-8 path").to_string();
    let expected = std::fs::read(&path).expect("reading back");
    let _cleanup = RemoveOnDrop(path.clone());
    let ktls = kernel_has_tls();
    let mode = if ktls {
        "ktls-sendfile"
    } else {
        "userspace-tls"
    };
    let in_guest = ktls_trace_tests::guest().is_some();
    let mut tried = 0;
    for client in ["curl", "openssl"] {
        let Some(exe) = ktls_trace_tests::which(client) else {
            // The guests must have both: a missing one is a broken image, not a skip.
            assert!(!in_guest, "{client} is missing from the guest image");
            continue;
        };
        for version in ["1.2", "1.3"] {
            // One request of the user's file, then the server exits with its report.
            let mut server = LoadServer::start(&[
                "--mode",
                mode,
                "--listen",
                "127.0.0.1:0",
                "--requests",
                "1",
                "--file",
                &p,
                "--json",
            ]);
            let addr = listen_addr(&server.ready());
            let body = match client {
                "curl" => fetch_with_curl(&exe, &addr, version),
                _ => fetch_with_openssl(&exe, &addr, version),
            };
            assert_eq!(body.len(), size, "{client} TLS {version}: byte count");
            assert!(body == expected, "{client} TLS {version}: different bytes");
            let (code, rep, err) = server.finish(60);
            assert_eq!(code, Some(0), "{client} TLS {version}: {err}");
            assert_eq!(u(&rep, "body_bytes"), size as u64, "{rep}");
            let negotiated = &rep["negotiated"][0];
            assert_eq!(negotiated["tls_version"], version, "{client}: {rep}");
            assert_eq!(rep["kernel_tls"], ktls, "{client} TLS {version}: {rep}");
            tried += 1;
        }
    }
    if tried == 0 {
        ktls_trace_tests::skip(
            "real_tls_clients_fetch_over_tls12_and_tls13",
            "neither curl nor openssl is installed here",
        );
    }
}

fn fetch_with_curl(curl: &Path, addr: &str, version: &str) -> Vec<u8> {
    let got = Command::new(curl)
        .args(["-sSk", "--max-time", "60"])
        .args(match version {
            "1.2" => ["--tlsv1.2", "--tls-max", "1.2"],
            _ => ["--tlsv1.3", "--tls-max", "1.3"],
        })
        .arg(format!("https://{addr}/any/path.bin"))
        .output()
        .expect("running curl");
    assert!(
        got.status.success(),
        "curl TLS {version} failed: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    got.stdout
}

fn fetch_with_openssl(openssl: &Path, addr: &str, version: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new(openssl)
        .args(["s_client", "-quiet", "-connect", addr])
        .arg(if version == "1.2" {
            "-tls1_2"
        } else {
            "-tls1_3"
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("writing the request");
    // Keep stdin open until the answer is in: s_client quits on stdin EOF.
    let mut all = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut all)
        .expect("reading the answer");
    drop(stdin);
    let _ = child.wait();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "openssl TLS {version}: no response head in {} bytes",
                all.len()
            )
        })
        + 4;
    all.split_off(split)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------- kTLS guests

/// Runs a ktls mode for one version/cipher and checks the kernel really carried the
/// connections: the negotiated pair, exact counts, and /proc/net/tls_stat moving.
fn ktls_run(mode: &str, tls: &str, cipher: &str, requests: u64, connections: u64, size: &str) {
    let bytes = match size {
        "1M" => MIB,
        "256K" => 256 * 1024,
        other => panic!("size {other}"),
    };
    let (tx0, rx0) = if kernel_has_tls() {
        (tls_stat("TlsTxSw"), tls_stat("TlsRxSw"))
    } else {
        (0, 0)
    };
    let out = load(&[
        "--mode",
        mode,
        "--tls",
        tls,
        "--cipher",
        cipher,
        "--requests",
        &requests.to_string(),
        "--connections",
        &connections.to_string(),
        "--file-size",
        size,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{mode} {tls} {cipher}");
    let rep = stdout_json(&out);
    assert_combined_ok(&rep, mode, requests, bytes);
    let s = &rep["server"];
    assert_eq!(s["kernel_tls"], true);
    for side in [s, &rep["client"]] {
        assert_eq!(side["tls_version"], tls, "{side}");
        assert_eq!(side["cipher"], cipher, "{side}");
    }
    // The kernel counts every socket it set up for software kTLS (TX and RX).
    let conns = u(s, "connections");
    assert!(conns >= 1);
    assert!(
        tls_stat("TlsTxSw") >= tx0 + conns,
        "TlsTxSw did not grow by {conns}"
    );
    assert!(
        tls_stat("TlsRxSw") >= rx0 + conns,
        "TlsRxSw did not grow by {conns}"
    );
    assert_eq!(tls_stat("TlsDecryptError"), 0);
}

#[test]
#[ignore = "needs kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_sendfile_every_version_and_cipher() {
    if !ktls_trace_tests::needs_ktls("ktls_sendfile_every_version_and_cipher") {
        return;
    }
    for tls in ["1.3", "1.2"] {
        for cipher in ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"] {
            ktls_run("ktls-sendfile", tls, cipher, 2, 1, "256K");
        }
    }
}

#[test]
#[ignore = "needs kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_write_every_version_and_cipher() {
    if !ktls_trace_tests::needs_ktls("ktls_write_every_version_and_cipher") {
        return;
    }
    for tls in ["1.3", "1.2"] {
        for cipher in ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"] {
            ktls_run("ktls-write", tls, cipher, 2, 1, "256K");
        }
    }
}

#[test]
#[ignore = "needs kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_sendfile_parallel_connections_exact_bytes() {
    if !ktls_trace_tests::needs_ktls("ktls_sendfile_parallel_connections_exact_bytes") {
        return;
    }
    ktls_run("ktls-sendfile", "1.3", "aes-128-gcm", 9, 3, "1M");
}

/// The default mode with default options is kernel TLS + sendfile and works.
#[test]
#[ignore = "needs kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_default_mode_works() {
    if !ktls_trace_tests::needs_ktls("ktls_default_mode_works") {
        return;
    }
    let out = load(&["--requests", "3", "--file-size", "1M", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let rep = stdout_json(&out);
    assert_combined_ok(&rep, "ktls-sendfile", 3, MIB);
    assert_eq!(rep["server"]["kernel_tls"], true);
}

#[test]
#[ignore = "needs kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_write_corruption_is_caught() {
    if !ktls_trace_tests::needs_ktls("ktls_write_corruption_is_caught") {
        return;
    }
    let out = load(&[
        "--mode",
        "ktls-write",
        "--corrupt-byte",
        "70000",
        "--file-size",
        "256K",
        "--requests",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let rep = stdout_json(&out);
    assert_eq!(rep["client"]["verified"], false);
    let msg = rep["client"]["error_messages"][0]
        .as_str()
        .expect("message");
    assert!(msg.contains("content mismatch"), "{msg}");
    assert_eq!(u(&rep["client"], "body_bytes"), 256 * 1024);
}

/// The kTLS server alone (how verify traces it), loaded by a separate client process.
#[test]
#[ignore = "needs kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn ktls_sendfile_server_only_serves_a_separate_client() {
    if !ktls_trace_tests::needs_ktls("ktls_sendfile_server_only_serves_a_separate_client") {
        return;
    }
    for tls in ["1.2", "1.3"] {
        let mut server = LoadServer::start(&[
            "--mode",
            "ktls-sendfile",
            "--tls",
            tls,
            "--listen",
            "127.0.0.1:0",
            "--requests",
            "3",
            "--file-size",
            "1M",
            "--json",
        ]);
        let addr = listen_addr(&server.ready());
        let out = load(&[
            "--client-only",
            "--connect",
            &addr,
            "--requests",
            "3",
            "--file-size",
            "1M",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0));
        let client = stdout_json(&out);
        assert_eq!(client["verified"], true);
        assert_eq!(client["tls_version"], tls);
        let (code, rep, _) = server.finish(120);
        assert_eq!(code, Some(0));
        assert_eq!(rep["kernel_tls"], true);
        assert_eq!(rep["tls_version"], tls);
        assert_eq!(u(&rep, "requests"), 3);
        assert_eq!(u(&rep, "body_bytes"), 3 * MIB);
        assert_eq!(u(&rep, "header_bytes"), u(&client, "header_bytes"));
        assert_eq!(u(&rep, "errors"), 0);
    }
}
