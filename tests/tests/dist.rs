//! The static binary of `cargo xtask dist` (x86_64 musl, no workload generator), as
//! shipped: on the host when it was built, and in every guest of the matrix, where the
//! image carries it at /opt/kt/dist/ktls-trace. It must need nothing but the kernel, see
//! the kernel exactly as the glibc build does, trace real transfers, and refuse the
//! commands it lacks with one line and exit 2.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use ktls_trace_tests::{
    Trace, Workload, bin, has_kprobes, has_ktls, kernel_version, needs_dist_bin, output_within,
    release, require_root,
};
use serde_json::Value;

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out: Output =
        output_within(cmd, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- the ELF file itself ----

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const EM_X86_64: u16 = 62;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What stands between an ELF file and "runs on any x86_64 Linux": not ELF64
/// little-endian x86_64, a program interpreter (PT_INTERP: the dynamic loader), or a
/// needed shared library (DT_NEEDED in PT_DYNAMIC; a static-pie has PT_DYNAMIC for its
/// own relocations, with no DT_NEEDED). Read here from the bytes, independently of the
/// xtask's `readelf` check.
fn dynamic_dependencies(elf: &[u8]) -> Vec<String> {
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF", "not an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "not ELF64 little-endian");
    assert_eq!(u16_at(elf, 18), EM_X86_64, "not x86_64");
    let phoff = u64_at(elf, 32) as usize;
    let phentsize = usize::from(u16_at(elf, 54));
    let phnum = usize::from(u16_at(elf, 56));
    let mut found = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let offset = u64_at(elf, ph + 8) as usize;
        let filesz = u64_at(elf, ph + 32) as usize;
        match u32_at(elf, ph) {
            PT_INTERP => found.push(format!(
                "program interpreter {:?}",
                String::from_utf8_lossy(&elf[offset..offset + filesz])
            )),
            PT_DYNAMIC => {
                for entry in elf[offset..offset + filesz].chunks_exact(16) {
                    match u64_at(entry, 0) {
                        DT_NULL => break,
                        DT_NEEDED => found.push("a DT_NEEDED shared library".into()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    found
}

#[test]
fn dist_elf_check_tells_a_dynamic_binary_from_a_static_one() {
    // The glibc build beside the tests needs its loader and libc: the check must see it,
    // or its "nothing" on the static binary would prove nothing.
    let glibc = std::fs::read(bin("ktls-trace")).expect("read the glibc build");
    let found = dynamic_dependencies(&glibc);
    assert!(
        found.iter().any(|f| f.contains("ld-linux-x86-64.so.2")),
        "{found:?}"
    );
    assert!(found.iter().any(|f| f.contains("DT_NEEDED")), "{found:?}");
}

#[test]
fn dist_binary_needs_nothing_but_the_kernel() {
    require_root();
    let Some(dist) = needs_dist_bin("dist_binary_needs_nothing_but_the_kernel") else {
        return;
    };
    let elf = std::fs::read(&dist).expect("read the static binary");
    assert_eq!(dynamic_dependencies(&elf), Vec::<String>::new());

    // And it runs in a root that holds nothing else: no loader, no libc, no /proc.
    let root = std::env::temp_dir().join(format!("kt-dist-chroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::copy(&dist, root.join("ktls-trace")).expect("copy");
    let chrooted = |args: &[&str]| {
        let dir = CString::new(root.as_os_str().as_bytes()).expect("path without NUL");
        let mut cmd = Command::new("/ktls-trace");
        cmd.args(args);
        // SAFETY: chroot and chdir are async-signal-safe system calls on a string made
        // before the fork; they change only the child, before it execs /ktls-trace (which
        // is then looked up inside the new root).
        unsafe {
            cmd.pre_exec(move || {
                if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        run(&mut cmd)
    };

    let (code, stdout, stderr) = chrooted(&["--version"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("ktls-trace {}", env!("CARGO_PKG_VERSION"))
    );

    // Without the workload generator: one clear line and exit 2, however it is asked for.
    for args in [
        &["load", "--mode", "ktls-sendfile"][..],
        &["load", "--help"],
        &["verify"],
        &["top", "--load", "--once"],
        &["top", "--once", "--load", "--mode", "userspace-tls"],
    ] {
        let (code, stdout, stderr) = chrooted(args);
        assert_eq!(code, 2, "{args:?}: {stdout} {stderr}");
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(
                "ktls-trace: error: this ktls-trace was built without the workload generator"
            ),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("use the glibc build for `"), "{stderr}");
    }
    // The help lists only what works, and says what is missing and why.
    let (code, help, _) = chrooted(&["--help"]);
    assert_eq!(code, 0);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        ["top", "trace", "doctor", "export", "help"],
        "{help}"
    );
    assert!(help.contains("static build"), "{help}");
    std::fs::remove_dir_all(&root).expect("cleanup");
}

/// `doctor --json` of the static and of the glibc build, minus the kernel TLS counters
/// (which move with the traffic of earlier tests).
fn doctor(ktls_trace: &Path) -> (i32, Value) {
    let (code, stdout, stderr) = run(Command::new(ktls_trace).args(["doctor", "--json"]));
    let mut v: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
    v.as_object_mut().expect("an object").remove("tls_stat");
    (code, v)
}

#[test]
fn dist_binary_sees_this_kernel_as_the_glibc_build_does() {
    require_root();
    let Some(dist) = needs_dist_bin("dist_binary_sees_this_kernel_as_the_glibc_build_does") else {
        return;
    };
    let (code, r) = doctor(&dist);
    assert_eq!(r["kernel"], release(), "{r}");
    assert_eq!(r["can_trace"], true, "{r}");
    assert_eq!(r["kprobes"]["ok"], has_kprobes(), "{r}");
    assert_eq!(r["programs_rejected"], serde_json::json!([]), "{r}");
    assert!(
        r["programs_verified"]
            .as_array()
            .is_some_and(|p| p.len() >= 21),
        "every program of the embedded object loads: {r}"
    );
    assert_eq!(code == 0, r["full"] == true, "{r}");
    // Same probes, same verdicts, same numbers: the build makes no difference.
    let (glibc_code, glibc) = doctor(&bin("ktls-trace"));
    assert_eq!(r, glibc);
    assert_eq!(code, glibc_code);
}

/// The probes `trace` attached, from its `ktls-trace: attached a, b, c` line.
fn attached(stderr: &[String]) -> Vec<String> {
    stderr
        .iter()
        .find_map(|l| l.strip_prefix("ktls-trace: attached "))
        .map(|l| l.split(", ").map(String::from).collect())
        .unwrap_or_default()
}

#[test]
fn dist_binary_traces_a_transfer_byte_for_byte() {
    require_root();
    let Some(dist) = needs_dist_bin("dist_binary_traces_a_transfer_byte_for_byte") else {
        return;
    };
    const N: u64 = 1_000_000;
    // The most the kernel can show: kTLS sendfile where there is kernel TLS (6.1, 6.12,
    // latest), plain sendfile on 5.10, the tracepoint fallback on the build machine.
    let full = has_kprobes();
    let ktls = full && has_ktls();
    let mode = if ktls {
        "ktls-sendfile"
    } else {
        "plain-sendfile"
    };
    let mut w = Workload::start(mode, N);
    let pid = w.pid;
    let trace = Trace::start_with(&dist, &["--pid", &pid.to_string()]);
    w.go();
    let report = w.finish();
    let out = trace.wait();
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(report["sent"], N);
    let summary = out.summary.as_ref().expect("summary");
    assert_eq!(summary["drops"], 0, "{}", out.census());
    let c = &summary["classified"];
    // The file entered sendfile once, all of it, and the tracer saw it.
    let sendfile = if out.of("sendfile64").next().is_some() {
        "sendfile64"
    } else {
        "do_sendfile"
    };
    assert_eq!(out.bytes_done(sendfile, Some(pid)), N, "{}", out.census());
    assert_eq!(c["sendfile_bytes"], N, "{c}");

    if !full {
        assert_eq!(summary["backend"], "tracepoint", "{summary}");
        return;
    }
    let probes = attached(&out.stderr);
    assert!(
        probes.iter().any(|p| p == "tcp_sendmsg"),
        "{probes:?}: {}",
        out.stderr_text()
    );
    if ktls {
        // The file's bytes reached kernel TLS through the probe of this kernel's era, as
        // TLS 1.3 AES-GCM-128 records, and left as exactly the ciphertext on the wire.
        let tls_probe = if kernel_version() < (6, 5) {
            "tls_sw_sendpage"
        } else {
            "tls_sw_sendmsg"
        };
        assert!(probes.iter().any(|p| p == tls_probe), "{probes:?}");
        assert_eq!(out.bytes_done(tls_probe, Some(pid)), N, "{}", out.census());
        for e in out.of(tls_probe) {
            assert_eq!(e["tls_version"], "1.3", "{e}");
            assert_eq!(e["tls_cipher"], "aes-128-gcm", "{e}");
        }
        assert_eq!(c["paths"]["ktls-sendfile"], N, "{c}");
        assert_eq!(c["ciphertext"], report["wire_bytes"], "{c}");
        assert_eq!(c["records"], report["records"], "{c}");
    } else {
        assert_eq!(c["paths"]["plain-sendfile"], N, "{c}");
        assert_eq!(c["ciphertext"], 0, "{c}");
    }
}

// ---- the example systemd unit's privileges ----

/// The unit that ships beside the binary (docs/deploy/): its capabilities are what this
/// test grants, so the two cannot drift apart.
const UNIT: &str = include_str!("../../docs/deploy/ktls-trace-export.service");

/// The capabilities of a `Key=CAP_A CAP_B` line of the unit, as setpriv names them
/// (`bpf`, `perfmon`).
fn unit_caps(key: &str) -> Vec<String> {
    UNIT.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the unit has no {key}= line"))
        .split_whitespace()
        .map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase())
        .collect()
}

/// `setpriv` (util-linux's; busybox's cannot change ids) running `args` as nobody with
/// exactly `caps`, and RLIMIT_MEMLOCK `memlock` as the unit's LimitMEMLOCK= sets it.
fn unprivileged(caps: &[String], memlock: libc::rlim_t, args: &[&str]) -> Command {
    let setpriv = Path::new("/usr/bin/setpriv");
    assert!(
        setpriv.is_file(),
        "no /usr/bin/setpriv (util-linux): the guest images carry it"
    );
    let set: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .args(args);
    // Raising the hard limit needs CAP_SYS_RESOURCE, which the root of some containers
    // lacks (the build machines'); kernels from 5.11 on do not charge BPF memory to this
    // limit, so there it may stay as it is.
    let must = memlock != libc::RLIM_INFINITY || kernel_version() < (5, 11);
    // SAFETY: setrlimit is an async-signal-safe system call on a value on the stack; it
    // changes only the child (still root here), before setpriv drops root and execs
    // ktls-trace.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: memlock,
                rlim_max: memlock,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 && must {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// `kernel.perf_event_paranoid` at a level for as long as this lives, then as before.
struct Paranoid {
    before: String,
}

const PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

impl Paranoid {
    fn now() -> String {
        std::fs::read_to_string(PARANOID)
            .expect("read perf_event_paranoid")
            .trim()
            .to_string()
    }

    fn set(level: &str) -> Paranoid {
        let before = Paranoid::now();
        if before != level {
            std::fs::write(PARANOID, level).expect("write perf_event_paranoid");
        }
        Paranoid { before }
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        if Paranoid::now() != self.before {
            let _ = std::fs::write(PARANOID, &self.before);
        }
    }
}

#[test]
fn dist_unit_capabilities_are_enough_to_trace_without_root() {
    require_root();
    let Some(dist) = needs_dist_bin("dist_unit_capabilities_are_enough_to_trace_without_root")
    else {
        return;
    };
    let caps = unit_caps("AmbientCapabilities");
    assert_eq!(caps, unit_caps("CapabilityBoundingSet"), "{UNIT}");
    for needed in ["bpf", "perfmon"] {
        assert!(caps.iter().any(|c| c == needed), "{caps:?}");
    }
    assert!(
        !caps.iter().any(|c| c == "sys_admin"),
        "not root's power: {caps:?}"
    );
    assert!(UNIT.contains("\nLimitMEMLOCK=infinity\n"), "{UNIT}");
    let dist = dist.to_str().expect("a UTF-8 path");

    // Debian's kernels (every guest) default to perf_event_paranoid 3, where a Debian
    // patch leaves perf_event_open (kprobes, tracepoints) to CAP_SYS_ADMIN alone: the
    // unit's capabilities are refused there, as the unit's comments say...
    if ktls_trace_tests::guest().is_some() && Paranoid::now() == "3" {
        let (code, _, stderr) = run(&mut unprivileged(
            &caps,
            libc::RLIM_INFINITY,
            &[dist, "trace", "--duration", "1"],
        ));
        // ...and it says so before loading anything, with what to do.
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("kernel.perf_event_paranoid is 3")
                && stderr.contains("sysctl kernel.perf_event_paranoid=2"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        let (code, stdout, stderr) = run(&mut unprivileged(
            &caps,
            libc::RLIM_INFINITY,
            &[dist, "doctor", "--json"],
        ));
        assert_eq!(code, 1, "doctor: not able to trace here: {stdout}{stderr}");
        assert!(stdout.contains("perf_event_paranoid is 3"), "{stdout}");
    }
    // ...and work at 2, the upstream default, which the deployment sets (docs/deploy.md).
    let _paranoid = Paranoid::set("2");

    // doctor agrees: not root, and able to trace as fully as root can here.
    let (code, stdout, stderr) = run(&mut unprivileged(
        &caps,
        libc::RLIM_INFINITY,
        &[dist, "doctor", "--json"],
    ));
    let r: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
    assert_eq!(r["privileges"], "not root (CAP_BPF, CAP_PERFMON)", "{r}");
    assert_eq!(r["can_trace"], true, "{r}");
    let (root_code, as_root) = doctor(Path::new(dist));
    assert_eq!(r["mode"], as_root["mode"], "{r}");
    assert_eq!(r["numbers"], as_root["numbers"], "{r}");
    assert_eq!(code, root_code, "{stderr}");

    // A real transfer, traced byte for byte by the unprivileged tracer.
    const N: u64 = 600_000;
    let ktls = has_kprobes() && has_ktls();
    let mut w = Workload::start(
        if ktls {
            "ktls-sendfile"
        } else {
            "plain-sendfile"
        },
        N,
    );
    let pid = w.pid.to_string();
    let trace = Trace::start_command(unprivileged(
        &caps,
        libc::RLIM_INFINITY,
        &[dist, "trace", "--json", "--pid", &pid],
    ));
    w.go();
    let report = w.finish();
    let out = trace.wait();
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(report["sent"], N);
    let c = &out.summary.as_ref().expect("summary")["classified"];
    assert_eq!(c["sendfile_bytes"], N, "{}", out.census());
    if has_kprobes() {
        let path = if ktls {
            "ktls-sendfile"
        } else {
            "plain-sendfile"
        };
        assert_eq!(c["paths"][path], N, "{}", out.census());
    }

    // The controls: without the capabilities it refuses, as the unit's comments say.
    let (code, _, stderr) = run(&mut unprivileged(
        &[],
        libc::RLIM_INFINITY,
        &[dist, "trace"],
    ));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("needs root, or the CAP_BPF and CAP_PERFMON capabilities"),
        "{stderr}"
    );
    if kernel_version() < (5, 11) {
        // Here maps are charged to RLIMIT_MEMLOCK, which only root may raise: without the
        // unit's LimitMEMLOCK=infinity the tracer cannot create its maps.
        let (code, _, stderr) = run(&mut unprivileged(
            &caps,
            64 * 1024,
            &[dist, "trace", "--duration", "1"],
        ));
        assert_eq!(code, 1, "{stderr}");
    }
}
