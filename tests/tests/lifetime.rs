//! Probe lifetime: however `trace` and `top` end (SIGINT, SIGTERM, SIGKILL, a panic), no
//! BPF program, link or map they created stays in the kernel, and no kprobe. Checked in
//! the kernel's own lists: the object ids the bpf syscall enumerates, and
//! /sys/kernel/debug/kprobes/list where debugfs is mounted (the guests; on the build
//! machine, without kprobes, the tracepoint programs and their links are checked).
//!
//! The ids are global: the tests of this file run one at a time (`SERIAL`), and the cargo
//! test binaries run one after another, so what appears while one tracer runs is its own.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use ktls_trace_tests::{bin, require_root};

static SERIAL: Mutex<()> = Mutex::new(());

/// What the kernel holds now.
#[derive(Debug, Default, Clone)]
struct Objects {
    progs: BTreeSet<u32>,
    links: BTreeSet<u32>,
    maps: BTreeSet<u32>,
    kprobes: BTreeSet<String>,
}

impl Objects {
    fn now() -> Objects {
        // An object freed between two enumeration calls is an error here: skipped.
        Objects {
            progs: aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .map(|p| p.id())
                .collect(),
            links: aya::programs::loaded_links()
                .filter_map(Result::ok)
                .map(|l| l.id())
                .collect(),
            maps: aya::maps::loaded_maps()
                .filter_map(Result::ok)
                .map(|m| m.id())
                .collect(),
            kprobes: std::fs::read_to_string("/sys/kernel/debug/kprobes/list")
                .map(|t| t.lines().map(String::from).collect())
                .unwrap_or_default(),
        }
    }

    /// What `self` has that `before` had not.
    fn since(&self, before: &Objects) -> Objects {
        Objects {
            progs: &self.progs - &before.progs,
            links: &self.links - &before.links,
            maps: &self.maps - &before.maps,
            kprobes: &self.kprobes - &before.kprobes,
        }
    }

    /// What of `ours` is still here.
    fn left_of(&self, ours: &Objects) -> Objects {
        Objects {
            progs: &self.progs & &ours.progs,
            links: &self.links & &ours.links,
            maps: &self.maps & &ours.maps,
            kprobes: &self.kprobes & &ours.kprobes,
        }
    }

    fn is_empty(&self) -> bool {
        self.progs.is_empty()
            && self.links.is_empty()
            && self.maps.is_empty()
            && self.kprobes.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Death {
    Signal(i32),
    Panic,
}

/// Starts `ktls-trace ARGS`, waits until its probes are attached, records what it added
/// to the kernel, ends it by `death`, and checks that all of it is gone.
fn dies_clean(args: &[&str], death: Death) {
    require_root();
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = Objects::now();
    let mut cmd = Command::new(bin("ktls-trace"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    if death == Death::Panic {
        // Debug builds panic at the first housekeeping tick after this many seconds.
        cmd.env("KTLS_TRACE_TEST_PANIC", "2");
    }
    let mut child = cmd.spawn().expect("spawn ktls-trace");
    let stderr = read_lines(&mut child);
    // Generous: attaching is slow in the emulated guests.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seen
        .iter()
        .any(|l: &String| l.contains("ktls-trace: attached"))
    {
        match stderr.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => seen.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{args:?} ended before attaching: {seen:?}")
            }
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never attached: {seen:?}"
        );
    }
    let ours = Objects::now().since(&before);
    assert!(
        !ours.progs.is_empty(),
        "{args:?}: no new BPF program while attached (cannot enumerate?): {ours:?}"
    );

    if let Death::Signal(sig) = death {
        // SAFETY: kill with a valid signal number on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let status = wait(&mut child, Duration::from_secs(60));
    seen.extend(stderr.try_iter());
    match death {
        Death::Signal(libc::SIGKILL) => {
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{args:?}: {status}");
        }
        // Handled: the command ends on its own, through its destructors.
        Death::Signal(_) => assert!(status.code().is_some(), "{args:?}: {status} {seen:?}"),
        Death::Panic => {
            assert_eq!(status.code(), Some(101), "{args:?}: {status} {seen:?}");
            assert!(
                seen.iter().any(|l| l.contains("KTLS_TRACE_TEST_PANIC")),
                "{args:?}: {seen:?}"
            );
        }
    }

    // The kernel frees some objects from a work queue after the last reference goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = Objects::now().left_of(&ours);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} after {death:?}: still in the kernel: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ktls-trace did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const TRACE: &[&str] = &["trace", "--json", "--duration", "120"];
const TOP: &[&str] = &["top", "--once", "--json", "--interval", "60"];

#[test]
fn sigint_leaves_nothing_behind() {
    dies_clean(TRACE, Death::Signal(libc::SIGINT));
    dies_clean(TOP, Death::Signal(libc::SIGINT));
}

#[test]
fn sigterm_leaves_nothing_behind() {
    dies_clean(TRACE, Death::Signal(libc::SIGTERM));
    dies_clean(TOP, Death::Signal(libc::SIGTERM));
}

#[test]
fn sigkill_leaves_nothing_behind() {
    dies_clean(TRACE, Death::Signal(libc::SIGKILL));
    dies_clean(TOP, Death::Signal(libc::SIGKILL));
}

#[test]
fn a_panic_leaves_nothing_behind() {
    dies_clean(TRACE, Death::Panic);
    dies_clean(TOP, Death::Panic);
}
