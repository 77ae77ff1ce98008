//! A running `ktls-trace export` for the tests: started on a free loopback port, scraped
//! with plain HTTP/1.0, stopped with SIGTERM.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{bin, exit_within};

/// A free port on loopback (bound and released: the exporter binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `ktls-trace export`.
pub struct Exporter {
    child: Child,
    pub port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Exporter {
    /// Starts it and waits until it serves.
    pub fn start(args: &[&str]) -> Exporter {
        Exporter::start_with(&bin("ktls-trace"), args)
    }

    /// [`Exporter::start`] with another build of the binary (the static one).
    pub fn start_with(exe: &std::path::Path, args: &[&str]) -> Exporter {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(exe)
            .args(["export", "--listen", &listen, "--interval", "0.2"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ktls-trace export");
        let stderr = crate::collect_text(child.stderr.take().expect("stderr"));
        let e = Exporter {
            child,
            port,
            stderr,
        };
        let t0 = Instant::now();
        while !e.stderr().contains("serving metrics on") {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "export did not start: {}",
                e.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `GET path` with these extra header lines: (status line, body).
    pub fn get(&self, path: &str, headers: &str) -> (String, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read response");
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    pub fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics", "");
        assert!(status.contains(" 200 "), "{status}: {body}");
        body
    }

    /// Scrapes until `want` holds for the value of the sample `series` (0 when absent).
    pub fn wait_for(&self, series: &str, want: impl Fn(f64) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let body = self.scrape();
            if want(value(&body, series).unwrap_or(0.0)) {
                return body;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "{series} = {:?}\n{body}\n{}",
                value(&body, series),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("exporter status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// SIGTERM, then the exit status within 30 s.
    pub fn stop(mut self) -> (i32, String) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = exit_within(&mut self.child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("export did not exit after SIGTERM: {}", self.stderr())
        });
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        (status.code().unwrap_or(-1), self.stderr())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample, given as its exact name and labels (`name{a="b"}`).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A histogram of a scrape: its `le` bounds with cumulative counts, `_sum` and `_count`,
/// for the series whose labels are `labels` (as written, e.g. `comm="x",pid="1"`).
pub fn histogram(text: &str, name: &str, labels: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let prefix = format!("{name}_bucket{{{labels},le=\"");
    let buckets = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect();
    let sum = value(text, &format!("{name}_sum{{{labels}}}")).unwrap_or(f64::NAN);
    let count = value(text, &format!("{name}_count{{{labels}}}")).unwrap_or(f64::NAN);
    (buckets, sum, count)
}

/// Checks that a histogram's `_sum` lies where its buckets say the latencies are: each
/// latency counted under `le` is above the previous bound (bounds are powers of two of ns,
/// so a bucket holds `[le/2, le)`, the first everything below it).
pub fn assert_sum_within_buckets(buckets: &[(f64, f64)], sum: f64, count: f64) {
    assert!(!buckets.is_empty(), "no buckets");
    assert_eq!(
        buckets.last().map(|b| b.1),
        Some(count),
        "+Inf is the count"
    );
    let (mut lower, mut upper, mut prev_le, mut prev_n) = (0.0, 0.0, 0.0, 0.0);
    for (i, (le, n)) in buckets.iter().enumerate() {
        let here = n - prev_n;
        assert!(here >= 0.0, "cumulative counts go down: {buckets:?}");
        if here > 0.0 {
            if i > 0 {
                lower += here * prev_le;
            }
            upper += here * le;
        }
        (prev_le, prev_n) = (*le, *n);
    }
    assert!(
        sum >= lower * 0.999_999 && sum <= upper * 1.000_001,
        "_sum {sum} outside [{lower}, {upper}] that the buckets allow: {buckets:?}"
    );
    assert!(
        count == 0.0 || sum > 0.0,
        "latencies of {count} calls sum to 0"
    );
}
