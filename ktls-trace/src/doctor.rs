//! `ktls-trace doctor`: what this kernel supports, and why, in plain words.

use serde::Serialize;

use crate::{
    kernel::{KernelFacts, PROBED_FUNCTIONS},
    plan::{Backend, BackendChoice, Decision, Plan},
    tracer::LoadCheck,
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
    pub tracepoints: Vec<String>,
    pub ktls: String,
    pub ktls_active: bool,
    pub probe_points: Vec<ProbePoint>,
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
}

/// Builds the report. `check` is the result of loading the programs (None when the
/// process may not load eBPF at all).
pub fn report(facts: &KernelFacts, check: Option<&LoadCheck>) -> Report {
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
            detail: "available (an fentry program loaded)".into(),
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

    let decisions: Vec<(String, Decision)> = match &plan {
        Ok(p) if p.backend == Backend::Kprobe => p
            .decisions
            .iter()
            .map(|(s, d)| (s.probe.name().to_string(), d.clone()))
            .collect(),
        _ => Vec::new(),
    };
    let probe_points = PROBED_FUNCTIONS
        .iter()
        .map(|f| {
            let present = facts.has_symbol(f);
            let note = match decisions.iter().find(|(n, _)| n == f).map(|(_, d)| d) {
                Some(Decision::Attach) => "will be probed".to_string(),
                Some(Decision::WaitForTls) => {
                    "in the tls module: probed once it is loaded".to_string()
                }
                Some(Decision::Skip(why)) => why.clone(),
                None if present => "present (kprobes unavailable)".to_string(),
                None => "absent".to_string(),
            };
            ProbePoint {
                name: f.to_string(),
                present,
                note,
            }
        })
        .collect();

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
    let full = facts.privileges.can_trace()
        && facts.kprobes.is_ok()
        && facts.tls.is_available()
        && verified_all
        && matches!(&plan, Ok(p) if p.backend == Backend::Kprobe);
    Report {
        kernel: facts.release.clone(),
        machine: facts.machine.clone(),
        privileges: facts.privileges.describe(),
        can_trace: facts.privileges.can_trace(),
        btf: facts.btf,
        kprobes,
        fentry,
        tracepoints,
        ktls: facts.tls.describe(),
        ktls_active: facts.tls.is_active(),
        probe_points,
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
        if r.tracepoints.is_empty() {
            "none of the fallback tracepoints found (is tracefs mounted?)".into()
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
            "full tracing possible"
        } else {
            "full tracing NOT possible here (see above)"
        }
    ));
    s
}
