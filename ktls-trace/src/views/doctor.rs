//! `ktls-trace doctor`: what this kernel supports, and why, in plain words.

use serde::Serialize;

use ktls_trace_common::probes::{Hook, PROBES};

use crate::{
    attach::LoadCheck,
    kernel::KernelFacts,
    plan::{self, Backend, BackendChoice, Decision, Number, Plan, Source, TlsLayoutState},
};

/// The whole report; `full` decides the exit code.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub machine: String,
    pub privileges: String,
    pub can_trace: bool,
    pub btf: bool,
    pub kprobes: Support,
    pub fentry: Support,
    /// Where tracepoints are seen (tracefs), or why they cannot be.
    pub tracefs: Support,
    pub tracepoints: Vec<String>,
    pub ktls: String,
    pub ktls_active: bool,
    pub probe_points: Vec<ProbePoint>,
    /// Where each number `top` and `verify` show comes from on this kernel.
    pub numbers: Vec<Number>,
    pub programs_verified: Vec<String>,
    pub programs_rejected: Vec<(String, String)>,
    pub tls_stat: Option<std::collections::BTreeMap<String, u64>>,
    pub backend: Option<&'static str>,
    pub mode: String,
    pub full: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Support {
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbePoint {
    pub name: String,
    pub present: bool,
    pub note: String,
    /// What it tells (the probe table's words).
    pub tells: &'static str,
}

/// `ktls-trace doctor`: exit 0 when full tracing is possible, 1 otherwise.
pub fn run(args: &crate::cli::DoctorArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut facts = KernelFacts::probe();
    // Seen as the tracer would see them: it mounts tracefs when it needs tracepoints, so a
    // fresh boot without the mount must not read as "no tracepoints". Without the
    // privileges to trace, nothing is mounted and the report says so.
    let tracefs_error = if facts.privileges.can_trace() {
        facts.mount_tracefs().err()
    } else {
        None
    };
    let check = facts
        .privileges
        .can_trace()
        .then(|| crate::attach::load_check(&facts));
    let report = report(&facts, check.as_ref(), tracefs_error.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, check.as_ref()));
    }
    Ok(if report.full {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

/// Builds the report. `check` is the result of loading the programs (None when the
/// process may not load eBPF at all); `tracefs_error` why tracefs could not be mounted.
pub fn report(
    facts: &KernelFacts,
    check: Option<&LoadCheck>,
    tracefs_error: Option<&str>,
) -> Report {
    let plan = Plan::choose(facts, BackendChoice::Auto);
    let kprobes = match &facts.kprobes {
        Ok(()) => Support {
            ok: true,
            detail: "available (kprobe PMU present)".into(),
        },
        Err(why) => Support {
            ok: false,
            detail: why.clone(),
        },
    };
    let fentry = match check.and_then(|c| c.fentry.clone()) {
        Some(Ok(())) => Support {
            ok: true,
            detail: "available (an fentry program loaded): --backend fentry runs the functions of vmlinux on BPF trampolines".into(),
        },
        Some(Err(why)) => Support {
            ok: false,
            detail: format!("not usable: {why}"),
        },
        None => Support {
            ok: false,
            detail: "not checked (needs privileges to load a test program)".into(),
        },
    };
    let tracefs = match (&facts.tracefs, tracefs_error) {
        (Some(p), _) => Support {
            ok: true,
            detail: format!("mounted at {}", p.display()),
        },
        (None, Some(e)) => Support {
            ok: false,
            detail: e.to_string(),
        },
        (None, None) => Support {
            ok: false,
            detail: "tracefs is not mounted (ktls-trace mounts it at /sys/kernel/tracing when it traces with the privileges to)".into(),
        },
    };
    let tracepoints = [
        ("syscalls", "sys_enter_sendfile64"),
        ("syscalls", "sys_exit_sendfile64"),
        ("sock", "sock_send_length"),
        ("tcp", "tcp_sendmsg_locked"),
    ]
    .iter()
    .filter(|(c, n)| crate::kernel::tracepoint_exists(facts.tracefs.as_deref(), c, n))
    .map(|(c, n)| format!("{c}:{n}"))
    .collect();

    let decision = |p| {
        plan.as_ref()
            .ok()
            .and_then(|plan| plan.decision(p))
            .cloned()
    };
    let probe_points = PROBES
        .iter()
        .map(|spec| {
            let p = spec.probe;
            let present = match spec.hook {
                Hook::Kfunc(f) => facts.has_symbol(f),
                Hook::Syscall(name) => crate::kernel::tracepoint_exists(
                    facts.tracefs.as_deref(),
                    "syscalls",
                    &format!("sys_enter_{name}"),
                ),
                Hook::Tracepoint { category, name } => {
                    crate::kernel::tracepoint_exists(facts.tracefs.as_deref(), category, name)
                }
            };
            // A trampoline pair the verifier took (see attach::load_check) is what
            // `--backend fentry` uses for this probe.
            let trampoline = match spec.hook {
                Hook::Kfunc(f) => {
                    plan.as_ref().is_ok_and(|plan| plan.trampolines)
                        && check
                            .is_some_and(|c| c.verified.iter().any(|v| *v == format!("{f}_fentry")))
                }
                _ => false,
            };
            let note = match decision(p) {
                Some(Decision::Attach) if trampoline => {
                    "will be probed (BPF trampolines: fentry/fexit)".to_string()
                }
                Some(Decision::Attach) => "will be probed".to_string(),
                Some(Decision::WaitForTls) => {
                    "in the tls module: probed once it is loaded".to_string()
                }
                Some(Decision::Skip(why)) => why,
                None if present => "present (no tracing plan on this kernel)".to_string(),
                None => "absent".to_string(),
            };
            ProbePoint {
                name: p.name().to_string(),
                present,
                note,
                tells: spec.tells,
            }
        })
        .collect();
    let numbers = match (&plan, check.and_then(|c| c.offsets.as_ref())) {
        (Ok(p), Some(off)) => {
            let layout = check
                .and_then(|c| c.tls_layout.clone())
                .unwrap_or(TlsLayoutState::Waiting);
            let mut v = plan::numbers(p, off, &layout);
            // top asks for less than trace and verify: say where its ciphertext differs.
            let mut top = p.clone();
            if matches!(layout, TlsLayoutState::Known(_))
                && top.derive_ciphertext()
                && let Some(n) = plan::numbers(&top, off, &layout)
                    .into_iter()
                    .find(|n| n.number.starts_with("kernel TLS ciphertext"))
            {
                v.push(plan::Number {
                    number: "kernel TLS ciphertext in top",
                    source: n.source,
                });
            }
            v
        }
        _ => Vec::new(),
    };

    let (backend, mode) = match (&plan, facts.privileges.can_trace()) {
        (Ok(p), true) => (Some(p.backend.name()), p.mode_sentence(facts)),
        (Ok(p), false) => (
            Some(p.backend.name()),
            format!(
                "{} (once run as root or with CAP_BPF + CAP_PERFMON)",
                p.mode_sentence(facts)
            ),
        ),
        (Err(e), _) => (None, format!("no tracing possible: {e}")),
    };
    let verified_all = check.is_some_and(|c| c.object_error.is_none() && c.rejected.is_empty());
    // Full: every number top and verify show can be produced here (one that waits for
    // the tls module counts: loading it is all it takes).
    let full = facts.privileges.can_trace()
        && verified_all
        && matches!(&plan, Ok(p) if p.backend == Backend::Kprobe)
        && !numbers.is_empty()
        && numbers.iter().all(|n| !n.source.is_missing());
    Report {
        kernel: facts.release.clone(),
        machine: facts.machine.clone(),
        privileges: facts.privileges.describe(),
        can_trace: facts.privileges.can_trace(),
        btf: facts.btf,
        kprobes,
        fentry,
        tracefs,
        tracepoints,
        ktls: facts.tls.describe(),
        ktls_active: facts.tls.is_active(),
        probe_points,
        numbers,
        programs_verified: check.map(|c| c.verified.clone()).unwrap_or_default(),
        programs_rejected: check.map(|c| c.rejected.clone()).unwrap_or_default(),
        tls_stat: facts.tls_stat.clone(),
        backend,
        mode,
        full,
    }
}

fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO " }
}

/// The text form.
pub fn render(r: &Report, check: Option<&LoadCheck>) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<14} {v}\n"));
    line("kernel", format!("{} ({})", r.kernel, r.machine));
    line(
        "privileges",
        format!(
            "{}{}",
            r.privileges,
            if r.can_trace {
                ""
            } else {
                " -- tracing needs root or CAP_BPF + CAP_PERFMON"
            }
        ),
    );
    line(
        "BTF",
        if r.btf {
            "yes (/sys/kernel/btf/vmlinux: struct offsets are read from it)".into()
        } else {
            "NO  (no /sys/kernel/btf/vmlinux: MSG_* flags cannot be read)".into()
        },
    );
    line(
        "kprobes",
        format!("{} {}", yes_no(r.kprobes.ok), r.kprobes.detail),
    );
    line(
        "fentry",
        format!("{} {}", yes_no(r.fentry.ok), r.fentry.detail),
    );
    line(
        "tracepoints",
        if !r.tracefs.ok {
            format!("not seen: {}", r.tracefs.detail)
        } else if r.tracepoints.is_empty() {
            "none of the fallback tracepoints in this kernel".into()
        } else {
            r.tracepoints.join(", ")
        },
    );
    line(
        "kernel TLS",
        format!("{} {}", yes_no(r.ktls_active), r.ktls),
    );
    match check {
        Some(c) if c.object_error.is_some() => line(
            "eBPF programs",
            format!("NO  {}", c.object_error.clone().unwrap_or_default()),
        ),
        Some(c) => line(
            "eBPF programs",
            format!(
                "{} {} of {} pass the kernel's verifier{}",
                yes_no(c.rejected.is_empty()),
                c.verified.len(),
                c.verified.len() + c.rejected.len(),
                c.rejected
                    .iter()
                    .map(|(n, w)| format!("; {n}: {w}"))
                    .collect::<String>()
            ),
        ),
        None => line("eBPF programs", "not checked (needs privileges)".into()),
    }
    s.push_str("probe points\n");
    for p in &r.probe_points {
        s.push_str(&format!(
            "  {:<22} {:<8} {}\n",
            p.name,
            if p.present { "present" } else { "absent" },
            p.note
        ));
    }
    if r.numbers.is_empty() {
        s.push_str("numbers        not checked (needs privileges)\n");
    } else {
        s.push_str("numbers (what top and verify show, and where it comes from here)\n");
        for n in &r.numbers {
            let (what, how) = match &n.source {
                Source::Exact(h) => ("exact", h.as_str()),
                Source::Derived(h) => ("derived", h.as_str()),
                Source::Pending(h) => ("pending", h.as_str()),
                Source::Missing(h) => ("MISSING", h.as_str()),
            };
            s.push_str(&format!("  {:<34} {what:<8} {how}\n", n.number));
        }
    }
    match &r.tls_stat {
        Some(st) => {
            let v: Vec<String> = st.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("{:<14} {}\n", "tls_stat", v.join(" ")));
        }
        None => s.push_str(&format!(
            "{:<14} {}\n",
            "tls_stat", "absent (no /proc/net/tls_stat)"
        )),
    }
    s.push_str(&format!("{:<14} {}\n", "mode", r.mode));
    s.push_str(&format!(
        "{:<14} {}\n",
        "verdict",
        if r.full {
            "full tracing possible: every number top and verify show can be produced"
        } else {
            "full tracing NOT possible here (see above)"
        }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::TlsState, plan::tests::facts};

    fn tracepoints_line(r: &Report) -> String {
        render(r, None)
            .lines()
            .find_map(|l| l.strip_prefix("tracepoints").map(|v| v.trim().to_string()))
            .unwrap_or_default()
    }

    /// Without tracefs the tracepoints are unknown, not absent: the report says why it
    /// could not look rather than "none found" (a fresh boot mounts tracefs on first use).
    #[test]
    fn tracepoints_without_tracefs_are_unknown_and_say_why() {
        let f = facts((6, 18), false, TlsState::Missing("no tls".into()), &[]);
        let why = "tracefs is not mounted and mounting it at /sys/kernel/tracing failed";
        let r = report(&f, None, Some(why));
        assert!(!r.tracefs.ok);
        assert!(r.tracepoints.is_empty());
        assert_eq!(tracepoints_line(&r), format!("not seen: {why}"));
        let r = report(&f, None, None);
        assert!(
            tracepoints_line(&r).starts_with("not seen: tracefs is not mounted"),
            "{}",
            tracepoints_line(&r)
        );
    }

    #[test]
    fn tracepoints_are_read_from_the_tracefs_found() {
        let dir = std::env::temp_dir().join(format!("ktls-trace-doctor-{}", std::process::id()));
        let events = dir.join("events");
        std::fs::create_dir_all(events.join("syscalls/sys_enter_sendfile64")).unwrap();
        std::fs::create_dir_all(events.join("sock/sock_send_length")).unwrap();
        let mut f = facts((6, 18), false, TlsState::Missing("no tls".into()), &[]);
        f.tracefs = Some(dir.clone());
        let r = report(&f, None, None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(r.tracefs.ok, "{:?}", r.tracefs);
        assert_eq!(
            r.tracepoints,
            vec!["syscalls:sys_enter_sendfile64", "sock:sock_send_length"]
        );
        assert_eq!(
            tracepoints_line(&r),
            "syscalls:sys_enter_sendfile64, sock:sock_send_length"
        );
        let present = |name: &str| {
            r.probe_points
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.present)
        };
        assert_eq!(present("sock_send_length"), Some(true));
        assert_eq!(present("sendfile64"), Some(true));
    }
}
