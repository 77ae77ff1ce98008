//! `ktls-trace export` scraped by a real Prometheus: Debian's `prometheus` server (which
//! the test images of the kTLS kernels carry, xtask/src/vm/initramfs.rs) scrapes the
//! exporter every second while transfers run through kernel TLS sendfile and user-space
//! TLS, and a PromQL query through Prometheus' HTTP API must return exactly the payload
//! bytes those transfers counted themselves. `promtool check metrics` lints a scrape.
//!
//! Which process's bytes: export runs with `--by pid`, and every query selects the pid of
//! the process whose own count it is compared with. Other processes (Prometheus itself,
//! the test) send on the loopback too and have series of their own.
//!
//! Whose count is the payload of a path:
//! - kTLS sendfile: `ktls-trace load --mode ktls-sendfile` (server and client in one
//!   process); the server's `body_bytes` are what its sendfile(2) calls returned, all of
//!   it the `ktls_sendfile` path (the response heads are kTLS writes, the handshakes and
//!   the client's requests user-space TLS records).
//! - user-space TLS: `ktls-workload userspace-tls` writes TLS records from user space and
//!   reports the bytes on the wire (`wire_bytes`), which is what the `userspace_tls` path
//!   counts (the bytes handed to tcp_sendmsg). `load --mode userspace-tls` runs too; its
//!   rustls handshakes and record overhead have no count of their own, so its figure is
//!   checked against bounds only.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ktls_trace_tests::{
    Workload, bin, exit_within,
    exporter::Exporter,
    load_server::{LoadServer, listen_addr},
    needs_ktls, output_within, require_root, which,
};
use serde_json::Value;

const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";
/// The most one sendfile() of the load server can send: its whole 1 MiB file.
const SENDFILE_MAX: u64 = 1 << 20;
/// Calls the kernel may skip in the whole test (3 seen on 7.3.4 under QEMU): more means
/// the reader blinds the probes again (attach/unpreempted.rs).
const MOST_SKIPPED: f64 = 16.0;
/// The rules a fleet operator drops in (docs/prometheus/): loaded into the guest's
/// Prometheus so that they are evaluated against a real exporter's series.
const RULES: &str = include_str!("../../docs/prometheus/ktls-trace.rules.yml");

/// The Prometheus configuration: one job scraping the exporter at `target` every second.
fn prometheus_config(rules: &Path, target: &str) -> String {
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: ktls-trace
    static_configs:
      - targets: ["{target}"]
"#,
        rules = rules.display()
    )
}

// ---- HTTP, by hand: HTTP/1.0 over a std TcpStream (no client crate in the tests) ----

struct Response {
    status: u16,
    /// Header lines, lowercased names: `content-type: text/plain; ...`.
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// `GET path` with an optional Accept header. HTTP/1.0: the server closes the connection
/// after the response, so the body is everything up to EOF.
fn get(addr: &str, path: &str, accept: Option<&str>) -> Result<Response, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(a) = accept {
        req.push_str(&format!("Accept: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}{path}: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("{addr}{path}: not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}{path}: no end of the head in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut r = Response {
        status,
        headers,
        body: body.to_string(),
    };
    if r.header("transfer-encoding").contains("chunked") {
        r.body = dechunk(&r.body).ok_or_else(|| format!("{addr}{path}: bad chunked body"))?;
    }
    Ok(r)
}

/// A chunked body (a server may send one even to HTTP/1.0, though it should not).
fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

/// Percent-encoding of a query parameter (PromQL has spaces, braces, quotes, `=`).
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- the processes ----

/// A background process (Prometheus), stopped (SIGTERM, then SIGKILL) when dropped, with
/// its output in a file to show when something fails.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Daemon { name, child, log }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The end is what matters, and a failure message must stay readable.
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        format!("---- {} log (tail) ----\n{}", self.name, &text[start..])
    }

    /// Panics with the log if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early ({status})\n{}", self.name, self.log());
        }
    }

    /// SIGTERM, then its exit status within `limit`.
    fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill with a valid signal on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        exit_within(&mut self.child, limit)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.terminate(Duration::from_secs(10));
        }
    }
}

/// Polls `f` every 500 ms until it returns Some, or panics after `secs` with `what` and
/// the last error.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("timed out after {secs} s waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

// ---- the exposition format ----

/// Samples as (labels, value), from a scrape or from a query's result.
type Samples = Vec<(BTreeMap<String, String>, f64)>;

/// The samples of one metric in a Prometheus text body: (labels, value).
fn samples(body: &str, metric: &str) -> Samples {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (name_labels, ""),
            };
            (name == metric).then_some(())?;
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The probes in state `state` (value 1) of a scrape.
fn probes_in(body: &str, state: &str) -> Vec<String> {
    samples(body, "ktls_trace_probe_state")
        .into_iter()
        .filter(|(l, v)| l.get("state").map(String::as_str) == Some(state) && *v == 1.0)
        .filter_map(|(l, _)| l.get("probe").cloned())
        .collect()
}

// ---- Prometheus' HTTP API ----

/// An instant query: the result vector as (labels, value).
fn query(promql: &str) -> Result<Samples, String> {
    let r = get(
        PROMETHEUS_ADDR,
        &format!("/api/v1/query?query={}", encode(promql)),
        None,
    )?;
    if r.status != 200 {
        return Err(format!("{promql}: HTTP {}: {}", r.status, r.body));
    }
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{promql}: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("{promql}: {v}"));
    }
    let result = v["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("{promql}: no result in {v}"))?;
    result
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            // [ time, "value" ]: the value is a string.
            let value = s["value"][1]
                .as_str()
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| format!("{promql}: bad sample {s}"))?;
            Ok((labels, value))
        })
        .collect()
}

/// Payload bytes per path of one process, as Prometheus has them now.
fn payload_of(pid: u32) -> Result<BTreeMap<String, u64>, String> {
    let q = format!("sum by (path) (ktls_trace_payload_bytes_total{{pid=\"{pid}\"}})");
    Ok(query(&q)?
        .into_iter()
        .map(|(l, v)| (l.get("path").cloned().unwrap_or_default(), v as u64))
        .collect())
}

/// export's drop counters by cause, from a scrape of its own (not Prometheus', which lags).
fn drops(export_addr: &str) -> Result<Samples, String> {
    get(export_addr, "/metrics", None).map(|r| samples(&r.body, "ktls_trace_events_dropped_total"))
}

/// The calls the kernel did not run a program for, as export counts them: the one loss
/// the tracer cannot prevent (a kprobe program skipped while another BPF program or a map
/// access holds its CPU; a preempted trampoline program needed again on its CPU).
fn skipped_by_kernel(export_addr: &str) -> u64 {
    drops(export_addr)
        .unwrap_or_default()
        .into_iter()
        .filter(|(l, _)| l.get("cause").map(String::as_str) == Some("skipped_by_kernel"))
        .map(|(_, v)| v as u64)
        .sum()
}

/// Waits until Prometheus has `path` of `pid` at `want` exactly, then lets three more
/// scrapes pass and checks that it stayed there (a late or doubled count would move it).
///
/// Short of `want` is accepted only as the product promises it, counted: the count has
/// stood still for 3 s, the kernel skipped calls (`skipped_by_kernel`, counted from 6.7),
/// and those calls, `max_call` bytes at most each, cover the gap. 7.3.4 under QEMU once
/// skipped 3 of a workload's 16,389-byte writes in this test, and export said so.
/// Anything else that never reaches `want` fails with the last figures.
fn assert_payload_settles(
    pid: u32,
    path: &str,
    want: u64,
    max_call: u64,
    export_addr: &str,
    context: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<(u64, Instant)> = None;
    let settled = loop {
        let now = payload_of(pid).unwrap_or_else(|e| panic!("query: {e}"));
        let got = now.get(path).copied();
        if got == Some(want) {
            break want;
        }
        if let Some(got) = got.filter(|g| *g < want) {
            match last {
                Some((was, since)) if was == got => {
                    let skipped = skipped_by_kernel(export_addr);
                    if since.elapsed() >= Duration::from_secs(3)
                        && skipped > 0
                        && want - got <= skipped * max_call
                    {
                        let _ = writeln!(
                            std::io::stderr(),
                            "KT-NOTE {path} of pid {pid}: {got} of {want} bytes, {skipped} call(s) skipped by the kernel and counted"
                        );
                        break got;
                    }
                }
                _ => last = Some((got, Instant::now())),
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has {path} of pid {pid} at {got:?}, want {want} (every path: {now:?})\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    std::thread::sleep(Duration::from_secs(4));
    let after = payload_of(pid).unwrap_or_else(|e| panic!("query: {e}"));
    assert_eq!(
        after.get(path),
        Some(&settled),
        "{path} of pid {pid} moved after it settled: {after:?}\n{}",
        context()
    );
}

/// `ktls-trace load ARGS --json`, which must succeed within 5 minutes: its report.
fn load_report(args: &[&str]) -> Value {
    let out = output_within(
        Command::new(bin("ktls-trace"))
            .arg("load")
            .args(args)
            .arg("--json"),
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "load report: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "load failed: {report}");
    report
}

#[test]
#[ignore = "needs kprobes + kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
fn prometheus_scrapes_export_and_gets_the_loads_own_byte_counts() {
    require_root();
    if !needs_ktls("prometheus_scrapes_export_and_gets_the_loads_own_byte_counts") {
        return;
    }
    // In the image of every kTLS kernel: a missing one is a failure of the image.
    let prometheus = which("prometheus").expect("prometheus is in the kTLS guest images");
    let promtool = which("promtool").expect("promtool is in the kTLS guest images");
    let dir = std::env::temp_dir().join(format!("ktls-export-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");

    // The static binary, as a fleet deploys it (`cargo xtask dist`; every guest image
    // carries it), on a free port (the helper's), with series per process: each query
    // below selects the pid whose own count it is compared with.
    let exe = ktls_trace_tests::needs_dist_bin(
        "prometheus_scrapes_export_and_gets_the_loads_own_byte_counts",
    )
    .unwrap_or_else(|| ktls_trace_tests::bin("ktls-trace"));
    let export = Exporter::start_with(&exe, &["--by", "pid"]);
    let export_addr = format!("127.0.0.1:{}", export.port);
    // /metrics may answer before the probes are attached (the port is bound first):
    // wait until the ones this test's transfers go through are.
    let started = Instant::now();
    let body = wait_for("export's probes to attach", 180, || {
        let r = get(&export_addr, "/metrics", None)?;
        let attached = probes_in(&r.body, "attached");
        let has = |names: &[&str]| names.iter().any(|n| attached.iter().any(|a| a == n));
        if r.status == 200
            && has(&["tls_sw_sendmsg", "tls_sw_sendpage"])
            && has(&["do_sendfile", "sendfile64"])
            && has(&["tcp_sendmsg"])
        {
            Ok(r.body)
        } else {
            Err(format!("HTTP {}, attached {attached:?}", r.status))
        }
    });
    eprintln!(
        "export ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        probes_in(&body, "lost").is_empty(),
        "{body}\n{}",
        export.stderr()
    );

    // The plain text format, by default: what promtool lints (and curl gets).
    let plain = get(&export_addr, "/metrics", None).expect("GET /metrics");
    assert_eq!(plain.status, 200);
    assert!(
        plain.header("content-type").starts_with("text/plain")
            && plain.header("content-type").contains("version=0.0.4"),
        "{:?}",
        plain.headers
    );
    assert!(!plain.body.contains("# EOF"), "0.0.4 has no EOF marker");
    let build_info = samples(&plain.body, "ktls_trace_build_info");
    assert_eq!(build_info.len(), 1, "{}", plain.body);
    assert_eq!(
        build_info[0].0.get("kernel_release"),
        Some(&ktls_trace_tests::release())
    );
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(plain.body.as_bytes())
        .expect("feeding promtool");
    let checked = check.wait_with_output().expect("promtool check metrics");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}\n{}{}\n---- the scrape ----\n{}",
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        plain.body
    );

    // OpenMetrics when asked for (Prometheus asks for it first).
    let om = get(
        &export_addr,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .expect("GET /metrics (OpenMetrics)");
    assert_eq!(om.status, 200);
    assert!(
        om.header("content-type")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        om.headers
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);

    // Prometheus, with the shipped rules.
    let rules = dir.join("ktls-trace.rules.yml");
    std::fs::write(&rules, RULES).expect("rules file");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&rules, &export_addr)).expect("config");
    let mut prom = Daemon::spawn(
        "prometheus",
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
            .current_dir(&dir),
        dir.join("prometheus.log"),
    );
    let started = Instant::now();
    wait_for("Prometheus to be ready", 180, || {
        prom.assert_running();
        let r = get(PROMETHEUS_ADDR, "/-/ready", None)?;
        (r.status == 200)
            .then_some(())
            .ok_or(format!("HTTP {}", r.status))
    });
    wait_for("the exporter target to be up", 60, || {
        let up = query("up{job=\"ktls-trace\"}")?;
        (up.len() == 1 && up[0].1 == 1.0)
            .then_some(())
            .ok_or(format!("up: {up:?}"))
    });
    eprintln!(
        "Prometheus ready and scraping after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // What a failed count is shown with: the drops (an exact count holds only without
    // any), and both logs.
    let context = || {
        let drops = drops(&export_addr);
        format!(
            "drops: {drops:?}\n---- export's stderr ----\n{}\n{}",
            export.stderr(),
            prom.log()
        )
    };

    // 1. kernel TLS sendfile: the body bytes of a load server, fetched by two clients in
    // turn. Prometheus must see the server's counter move between two scrapes: a series
    // whose first sample already holds all its bytes has no rate (and the recording rules
    // below are rates); one load of 8 MiB could fit between two scrapes (it did on 6.12).
    let mut server = LoadServer::start(&[
        "--mode",
        "ktls-sendfile",
        "--listen",
        "127.0.0.1:0",
        "--requests",
        "8",
        "--file-size",
        "1M",
        "--json",
    ]);
    let ready = server.ready();
    let load_pid = ready["pid"].as_u64().expect("server pid") as u32;
    let addr = listen_addr(&ready);
    let fetch = |requests: &str| {
        let report = load_report(&[
            "--client-only",
            "--mode",
            "ktls-sendfile",
            "--connect",
            &addr,
            "--requests",
            requests,
            "--file-size",
            "1M",
        ]);
        assert_eq!(report["verified"], true, "{report}");
    };
    fetch("4");
    assert_payload_settles(
        load_pid,
        "ktls_sendfile",
        4 << 20,
        SENDFILE_MAX,
        &export_addr,
        &context,
    );
    fetch("4");
    let (code, report, err) = server.finish(60);
    assert_eq!(code, Some(0), "{report}\n{err}");
    let body = report["body_bytes"].as_u64().expect("body_bytes");
    assert_eq!(body, 8 << 20, "{report}");
    assert_payload_settles(
        load_pid,
        "ktls_sendfile",
        body,
        SENDFILE_MAX,
        &export_addr,
        &context,
    );
    // Its response heads went through kernel TLS too (kTLS write), never user space.
    let paths = payload_of(load_pid).unwrap_or_else(|e| panic!("{e}"));
    assert!(paths.get("ktls_write").is_some_and(|b| *b > 0), "{paths:?}");

    // 2. user-space TLS: the load's rustls server (no exact count of its own) ...
    let report = load_report(&[
        "--mode",
        "userspace-tls",
        "--requests",
        "4",
        "--file-size",
        "256K",
    ]);
    let us_pid = report["server"]["pid"].as_u64().expect("server pid") as u32;
    let server = &report["server"];
    let plaintext =
        server["body_bytes"].as_u64().unwrap_or(0) + server["header_bytes"].as_u64().unwrap_or(0);
    let connections = server["connections"].as_u64().unwrap_or(0);
    // ... is at least the plaintext it encrypted, plus at most 29 bytes per 16 KiB record
    // (TLS 1.2) and a handshake per connection in both directions (well under 16 KiB).
    let most = plaintext + plaintext.div_ceil(16 << 10) * 29 + connections * (16 << 10) + 4096;
    let settled = wait_for("the load's user-space TLS bytes", 60, || {
        let p = payload_of(us_pid)?;
        match p.get("userspace_tls") {
            Some(b) if *b >= plaintext => Ok(p),
            _ => Err(format!("{p:?}, want at least {plaintext}")),
        }
    });
    assert!(
        settled["userspace_tls"] <= most,
        "{settled:?}: more than {most}: {report}"
    );
    // (export serves every path of a process, 0 for those it did not use.)
    for kernel in ["ktls_sendfile", "ktls_write", "ktls_device"] {
        assert_eq!(
            settled.get(kernel),
            Some(&0),
            "{settled:?}: {report}\n{}",
            context()
        );
    }
    // ... and a process that counts its own wire bytes.
    let mut w = Workload::start("userspace-tls", 2_000_000);
    let w_pid = w.pid;
    w.go();
    let wreport = w.finish();
    let wire = wreport["wire_bytes"].as_u64().expect("wire_bytes");
    // One write() per record: 5 bytes of header and 16 KiB at most.
    assert_payload_settles(
        w_pid,
        "userspace_tls",
        wire,
        5 + (16 << 10),
        &export_addr,
        &context,
    );
    let paths = payload_of(w_pid).unwrap_or_else(|e| panic!("{e}"));
    let others: u64 = paths
        .iter()
        .filter(|(p, _)| *p != "userspace_tls")
        .map(|(_, b)| b)
        .sum();
    assert_eq!(others, 0, "only user-space TLS: {paths:?}");

    // The shipped recording rules, on the real series: the per-host rate saw kTLS
    // sendfile, and the share of TLS payload not served by it is a share.
    let rate = query("instance:ktls_trace_payload_bytes:rate5m{path=\"ktls_sendfile\"}")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rate.len() == 1 && rate[0].1 > 0.0,
        "{rate:?}\n{}",
        context()
    );
    let share = query("instance:ktls_trace_tls_payload_not_ktls_sendfile:ratio_rate5m")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        share.len() == 1 && share[0].1 > 0.0 && share[0].1 < 1.0,
        "{share:?}"
    );
    let rules_health = get(PROMETHEUS_ADDR, "/api/v1/rules", None).expect("rules");
    assert!(
        !rules_health.body.contains("\"health\":\"err\""),
        "{}",
        rules_health.body
    );

    // Nothing was lost but what the kernel skipped (checked against the counts above):
    // no cause of the tracer's own, and a few skips at most.
    let drops = drops(&export_addr).unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(drops.len(), 5, "every cause, always: {drops:?}");
    for (labels, v) in &drops {
        let limit = match labels.get("cause").map(String::as_str) {
            Some("skipped_by_kernel") => MOST_SKIPPED,
            _ => 0.0,
        };
        assert!(*v <= limit, "{drops:?}");
    }

    // SIGTERM ends the exporter cleanly.
    drop(prom);
    let (code, err) = export.stop();
    assert_eq!(code, 0, "export on SIGTERM: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn percent_encoding_and_the_text_format() {
    assert_eq!(
        encode("sum by (path) (x{pid=\"1\"})"),
        "sum%20by%20%28path%29%20%28x%7Bpid%3D%221%22%7D%29"
    );
    let body = "# HELP ktls_trace_probe_state x\n\
ktls_trace_probe_state{probe=\"tcp_sendmsg\",state=\"attached\"} 1\n\
ktls_trace_probe_state{probe=\"tcp_sendmsg\",state=\"lost\"} 0\n\
ktls_trace_probe_state{probe=\"do_sendfile\",state=\"lost\"} 1\n\
ktls_trace_series 3\n";
    assert_eq!(probes_in(body, "attached"), ["tcp_sendmsg"]);
    assert_eq!(probes_in(body, "lost"), ["do_sendfile"]);
    assert_eq!(samples(body, "ktls_trace_series")[0].1, 3.0);
    assert_eq!(
        dechunk("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n").as_deref(),
        Some("hello!")
    );
    assert_eq!(dechunk("5\r\nhel"), None);
}
