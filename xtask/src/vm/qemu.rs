//! Booting a guest under qemu-system-x86_64 with TCG (no working KVM on these machines),
//! either captured (console to a log, with a deadline) or interactive.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, LineWriter, Read, Write as _},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// How TCG runs the guest's two vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vcpus {
    /// One host thread runs both vCPUs in turn (`thread=single`): the tests, the demo and
    /// the shell. With one thread per vCPU, the 6.1 guest once oopsed with a jump to
    /// address 0 at the entry of tls_sw_sendpage (kernel_sendpage -> RIP 0) while a tracer
    /// attached its kprobes, i.e. while the kernel live-patched code another vCPU was
    /// running. That is routine on real CPUs, so we suspect multi-threaded TCG's handling
    /// of cross-modifying code; serialising the vCPUs takes that race away and keeps the
    /// guest's view (2 CPUs, per-CPU maps, kworkers) the same, at about 1.4x the time.
    Serial,
    /// One host thread per vCPU (`thread=multi`): the bench, whose ratios compare a server,
    /// its client and a tracer running at the same time and were measured this way.
    Parallel,
}

/// The qemu command line. Loopback is all the tests use, hence `-nic none` (which also
/// spares qemu the NIC option ROM). `-nographic` puts the serial console on stdio with
/// the monitor multiplexed (Ctrl-A X quits, Ctrl-A C is the monitor).
pub fn command(vmlinuz: &Path, initramfs: &Path, interactive: bool, vcpus: Vcpus) -> Command {
    let mut append = String::from("console=ttyS0 panic=-1 mitigations=off");
    if !interactive {
        // Fewer kernel lines between the test output; panics and oopses still print.
        append.push_str(" quiet");
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        match vcpus {
            Vcpus::Serial => "tcg,thread=single",
            Vcpus::Parallel => "tcg,thread=multi",
        },
        "-cpu",
        "max",
        "-m",
        "2048",
        "-smp",
        "2",
    ])
    .args(["-nographic", "-no-reboot", "-nic", "none"])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .args(["-append", &append]);
    qemu
}

/// What a captured boot produced.
#[derive(Debug)]
pub struct Captured {
    /// Console lines (serial output, then `qemu: ` + qemu's own stderr) with the time
    /// since qemu started.
    pub lines: Vec<(Duration, String)>,
    pub timed_out: bool,
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
}

enum Line {
    Out(String),
    Err(String),
}

/// Runs qemu, writes every console line to `log` as it arrives, hands each line to
/// `on_line` (for live progress), and kills qemu at the deadline.
pub fn run_captured(
    mut qemu: Command,
    log: &Path,
    timeout: Duration,
    mut on_line: impl FnMut(Duration, &str),
) -> Result<Captured> {
    let mut log_file =
        LineWriter::new(File::create(log).with_context(|| format!("creating {}", log.display()))?);
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = cmd::show(&qemu);
    eprintln!("+ {shown}");
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .with_context(|| format!("cannot start qemu (package qemu-system-x86): `{shown}`"))?;

    let (tx, rx) = mpsc::channel();
    let readers = spawn_readers(&mut child, tx);

    let deadline = started + timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    let mut record = |line: Line, lines: &mut Vec<(Duration, String)>| {
        let text = match line {
            Line::Out(t) => t,
            Line::Err(t) => format!("qemu: {t}"),
        };
        let at = started.elapsed();
        // The log is a debugging aid; failing to write it must not fail the run. Each line
        // carries the host's seconds since qemu started: a test's time is the gap between
        // its `test ... ok` line and the line before it (libtest prints both halves at once
        // when the test ends), which is how slow tests are found.
        let _ = writeln!(log_file, "[{:7.1}] {text}", at.as_secs_f64());
        on_line(at, &text);
        lines.push((at, text));
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(500))) {
            Ok(line) => record(line, &mut lines),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: qemu has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        // Our own child, by handle: SIGKILL, then reap it.
        let _ = child.kill();
    }
    let status = child.wait().ok();
    for r in readers {
        let _ = r.join();
    }
    while let Ok(line) = rx.try_recv() {
        record(line, &mut lines);
    }
    if timed_out {
        let note = format!(
            "KT-HOST-TIMEOUT qemu killed after {}",
            cmd::fmt_duration(timeout)
        );
        let _ = writeln!(log_file, "{note}");
        lines.push((started.elapsed(), note));
    }
    Ok(Captured {
        lines,
        timed_out,
        status,
        elapsed: started.elapsed(),
    })
}

fn spawn_readers(child: &mut Child, tx: mpsc::Sender<Line>) -> Vec<thread::JoinHandle<()>> {
    let mut handles = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        handles.push(thread::spawn(move || {
            read_lines(out, |l| tx.send(Line::Out(l)).is_ok())
        }));
    }
    if let Some(err) = child.stderr.take() {
        handles.push(thread::spawn(move || {
            read_lines(err, |l| tx.send(Line::Err(l)).is_ok())
        }));
    }
    handles
}

/// Splits a byte stream into clean lines: serial output has `\r\n`, may carry terminal
/// escapes from qemu's stdio mux, and is not guaranteed to be UTF-8 mid-panic.
fn read_lines(stream: impl Read, mut send: impl FnMut(String) -> bool) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !send(clean_line(&buf)) {
                    return;
                }
            }
        }
    }
}

/// Drops `\r`, ANSI escape sequences and other control characters (tabs stay).
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte(@..~); other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for p in chars.by_ref() {
                        if ('@'..='~').contains(&p) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Runs qemu attached to this terminal (vm-shell): the guest console is the terminal.
pub fn run_interactive(mut qemu: Command) -> Result<()> {
    eprintln!("+ {}", cmd::show(&qemu));
    eprintln!("vm: Ctrl-A X quits qemu; `exit` in the guest shell powers it off");
    let status = qemu
        .status()
        .context("cannot start qemu (package qemu-system-x86)")?;
    eprintln!("vm: qemu exited ({status})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_cleaned() {
        assert_eq!(clean_line(b"test a ... ok\r\n"), "test a ... ok");
        assert_eq!(
            clean_line(b"\x1b[?7lKT-BOOTED guest=6.1\r\n"),
            "KT-BOOTED guest=6.1"
        );
        assert_eq!(clean_line(b"\x1bcplain\n"), "plain");
        assert_eq!(clean_line(b"a\tb\xff\n"), "a\tb\u{fffd}");
    }

    #[test]
    fn captured_run_times_out_and_kills() {
        let log = std::env::temp_dir().join(format!("xtask-qemu-test-{}.log", std::process::id()));
        let mut sleeper = Command::new("sh");
        sleeper.args(["-c", "echo hello; echo oops >&2; exec sleep 30"]);
        let started = Instant::now();
        let mut seen = Vec::new();
        let cap = run_captured(sleeper, &log, Duration::from_millis(800), |_, l| {
            seen.push(l.to_string())
        })
        .unwrap();
        assert!(cap.timed_out);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(seen.contains(&"hello".to_string()));
        assert!(seen.contains(&"qemu: oops".to_string()));
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("hello") && logged.contains("KT-HOST-TIMEOUT"));
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn captured_run_ends_with_the_process() {
        let log = std::env::temp_dir().join(format!("xtask-qemu-test2-{}.log", std::process::id()));
        let mut quick = Command::new("sh");
        quick.args(["-c", "printf 'one\\r\\ntwo'"]);
        let cap = run_captured(quick, &log, Duration::from_secs(20), |_, _| {}).unwrap();
        assert!(!cap.timed_out);
        let texts: Vec<&str> = cap.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(texts, ["one", "two"]);
        assert!(cap.status.is_some_and(|s| s.success()));
        let _ = std::fs::remove_file(&log);
    }
}
