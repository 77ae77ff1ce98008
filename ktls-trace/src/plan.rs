//! Which probes to attach on this kernel, and why the others are not: a pure function of
//! [`KernelFacts`], so it can be tested for every kernel era without that kernel.
//!
//! Adding a probe: a variant in `ktls_trace_common::Probe`, its programs in
//! `ktls-trace-ebpf`, and one entry in [`CATALOGUE`].

use ktls_trace_common::Probe;

use crate::kernel::KernelFacts;

/// How a probe attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// kprobe + kretprobe on a kernel function.
    Kfunc {
        func: &'static str,
        entry: &'static str,
        ret: &'static str,
    },
    /// A pair of tracepoints (syscall enter/exit), or one when `exit` is None.
    Tracepoint {
        category: &'static str,
        enter: (&'static str, &'static str),
        exit: Option<(&'static str, &'static str)>,
    },
}

/// The tracing backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// kprobes on the kTLS, sendfile and TCP functions: the full picture.
    Kprobe,
    /// Tracepoints only (kernels without kprobes): sendfile and socket send bytes.
    Tracepoint,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kprobe => "kprobe",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

/// What the user asked for with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// kprobes where the kernel has them, tracepoints otherwise.
    #[default]
    Auto,
    /// kprobes only; fail if the kernel has none.
    Kprobe,
    /// tracepoints only, even where kprobes exist.
    Tracepoint,
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub probe: Probe,
    pub backend: Backend,
    pub attach: Attach,
    /// Lives in the `tls` module: absent until it is loaded.
    pub in_tls_module: bool,
    /// What it tells the user.
    pub role: &'static str,
}

const fn kfunc(
    probe: Probe,
    func: &'static str,
    entry: &'static str,
    ret: &'static str,
    in_tls_module: bool,
    role: &'static str,
) -> Spec {
    Spec {
        probe,
        backend: Backend::Kprobe,
        attach: Attach::Kfunc { func, entry, ret },
        in_tls_module,
        role,
    }
}

/// Every probe ktls-trace knows.
pub const CATALOGUE: [Spec; 12] = [
    kfunc(
        Probe::DoSendfile,
        "do_sendfile",
        "do_sendfile_entry",
        "do_sendfile_ret",
        false,
        "file bytes entering sendfile(2)",
    ),
    kfunc(
        Probe::TlsSwSendpage,
        "tls_sw_sendpage",
        "tls_sw_sendpage_entry",
        "tls_sw_sendpage_ret",
        true,
        "plaintext pages spliced into software kTLS (before 6.5)",
    ),
    kfunc(
        Probe::TlsSwSendmsg,
        "tls_sw_sendmsg",
        "tls_sw_sendmsg_entry",
        "tls_sw_sendmsg_ret",
        true,
        "plaintext into software kTLS (MSG_SPLICE_PAGES = sendfile path on 6.5+)",
    ),
    kfunc(
        Probe::TlsSwSpliceEof,
        "tls_sw_splice_eof",
        "tls_sw_splice_eof_entry",
        "tls_sw_splice_eof_ret",
        true,
        "end of a splice: flushes the open TLS record",
    ),
    kfunc(
        Probe::TlsPushRecord,
        "tls_push_record",
        "tls_push_record_entry",
        "tls_push_record_ret",
        true,
        "one software kTLS record encrypted and pushed (latency = encryption + push)",
    ),
    kfunc(
        Probe::TlsDeviceSendmsg,
        "tls_device_sendmsg",
        "tls_device_sendmsg_entry",
        "tls_device_sendmsg_ret",
        true,
        "plaintext into NIC-offloaded kTLS",
    ),
    kfunc(
        Probe::TlsDeviceSendpage,
        "tls_device_sendpage",
        "tls_device_sendpage_entry",
        "tls_device_sendpage_ret",
        true,
        "pages into NIC-offloaded kTLS (before 6.5)",
    ),
    kfunc(
        Probe::TcpSendmsg,
        "tcp_sendmsg",
        "tcp_sendmsg_entry",
        "tcp_sendmsg_ret",
        false,
        "socket-level TCP sends (plain and user-space TLS; kTLS bypasses it)",
    ),
    kfunc(
        Probe::DoTcpSendpages,
        "do_tcp_sendpages",
        "do_tcp_sendpages_entry",
        "do_tcp_sendpages_ret",
        false,
        "where kTLS pushes ciphertext into TCP (before 6.5)",
    ),
    kfunc(
        Probe::TcpSendmsgLocked,
        "tcp_sendmsg_locked",
        "tcp_sendmsg_locked_entry",
        "tcp_sendmsg_locked_ret",
        false,
        "where kTLS pushes ciphertext into TCP (6.5+)",
    ),
    Spec {
        probe: Probe::Sendfile64,
        backend: Backend::Tracepoint,
        attach: Attach::Tracepoint {
            category: "syscalls",
            enter: ("sys_enter_sendfile64", "sys_enter_sendfile64"),
            exit: Some(("sys_exit_sendfile64", "sys_exit_sendfile64")),
        },
        in_tls_module: false,
        role: "sendfile(2) calls and bytes",
    },
    Spec {
        probe: Probe::SockSendLength,
        backend: Backend::Tracepoint,
        attach: Attach::Tracepoint {
            category: "sock",
            enter: ("sock_send_length", "sock_send_length"),
            exit: None,
        },
        in_tls_module: false,
        role: "bytes each TCP socket's sendmsg accepted (plaintext on kTLS sockets)",
    },
];

pub fn spec(probe: Probe) -> &'static Spec {
    CATALOGUE
        .iter()
        .find(|s| s.probe == probe)
        .unwrap_or(&CATALOGUE[0])
}

/// The decision for one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Attach,
    /// In the tls module, which is not loaded yet: attached when it appears.
    WaitForTls,
    /// Not on this kernel; the string says why (for the user).
    Skip(String),
}

/// The attach plan for this kernel.
#[derive(Debug, Clone)]
pub struct Plan {
    pub backend: Backend,
    /// Why the backend is reduced, when it is.
    pub reduced_because: Option<String>,
    pub decisions: Vec<(Spec, Decision)>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--backend kprobe asked for kprobes, but {0}")]
    NoKprobes(String),
    #[error("no usable probe point on this kernel: {0}")]
    Nothing(String),
}

impl Plan {
    pub fn choose(facts: &KernelFacts, choice: BackendChoice) -> Result<Plan, PlanError> {
        let (backend, reduced_because) = match (choice, &facts.kprobes) {
            (BackendChoice::Tracepoint, _) => (
                Backend::Tracepoint,
                Some("--backend tracepoint was given".to_string()),
            ),
            (BackendChoice::Kprobe, Err(why)) => return Err(PlanError::NoKprobes(why.clone())),
            (_, Ok(())) => (Backend::Kprobe, None),
            (BackendChoice::Auto, Err(why)) => (Backend::Tracepoint, Some(why.clone())),
        };
        let decisions: Vec<(Spec, Decision)> = CATALOGUE
            .iter()
            .filter(|s| s.backend == backend)
            .map(|s| (*s, decide(facts, s)))
            .collect();
        if !decisions
            .iter()
            .any(|(_, d)| matches!(d, Decision::Attach | Decision::WaitForTls))
        {
            let why = decisions
                .iter()
                .map(|(s, d)| match d {
                    Decision::Skip(w) => format!("{}: {w}", s.probe.name()),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(PlanError::Nothing(why));
        }
        Ok(Plan {
            backend,
            reduced_because,
            decisions,
        })
    }

    pub fn to_attach(&self) -> impl Iterator<Item = &Spec> {
        self.decisions
            .iter()
            .filter(|(_, d)| *d == Decision::Attach)
            .map(|(s, _)| s)
    }

    /// One sentence: what this plan can see.
    pub fn mode_sentence(&self, facts: &KernelFacts) -> String {
        match (self.backend, &self.reduced_because) {
            (Backend::Kprobe, _) => {
                let tls = match &facts.tls {
                    t if t.is_active() => "with kernel TLS visible".to_string(),
                    TlsState::Loadable(_) => {
                        "kernel TLS probes attach when the tls module is loaded".to_string()
                    }
                    TlsState::Missing(why) => format!("but no kernel TLS ({why})"),
                    _ => String::new(),
                };
                format!("full mode: kprobes on sendfile, kernel TLS and TCP transmit, {tls}")
            }
            (Backend::Tracepoint, Some(why)) => format!(
                "reduced mode: tracepoints only (sendfile and socket send bytes; no kernel TLS or TCP push visibility) because {why}"
            ),
            (Backend::Tracepoint, None) => "reduced mode: tracepoints only".to_string(),
        }
    }
}

use crate::kernel::TlsState;

fn decide(facts: &KernelFacts, s: &Spec) -> Decision {
    match s.attach {
        Attach::Kfunc { func, .. } => {
            if facts.has_symbol(func) {
                return Decision::Attach;
            }
            let era_gone = matches!(
                s.probe,
                Probe::TlsSwSendpage | Probe::TlsDeviceSendpage | Probe::DoTcpSendpages
            ) && facts.before_6_5() == Some(false);
            let era_new = s.probe == Probe::TlsSwSpliceEof && facts.before_6_5() == Some(true);
            if era_gone {
                Decision::Skip("not in this kernel: ->sendpage was removed in 6.5".into())
            } else if s.in_tls_module && !facts.tls.is_active() {
                if facts.tls.is_available() {
                    Decision::WaitForTls
                } else {
                    Decision::Skip(format!("kernel TLS {}", facts.tls.describe()))
                }
            } else if era_new {
                Decision::Skip(
                    "not in this kernel (added in 6.5, backported only to some 6.1 stable releases)"
                        .into(),
                )
            } else if matches!(s.probe, Probe::TlsDeviceSendmsg | Probe::TlsDeviceSendpage) {
                Decision::Skip("not in this kernel (built without CONFIG_TLS_DEVICE)".into())
            } else {
                Decision::Skip("not in this kernel's symbol table".into())
            }
        }
        Attach::Tracepoint {
            category, enter, ..
        } => {
            if crate::kernel::tracepoint_exists(facts.tracefs.as_deref(), category, enter.1)
                || facts.tracefs.is_none()
            {
                // Without tracefs mounted we cannot check; the tracer mounts it first.
                Decision::Attach
            } else {
                Decision::Skip(format!(
                    "tracepoint {category}:{} not in this kernel",
                    enter.1
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::kernel::{Privileges, TlsState};

    fn facts(version: (u32, u32), kprobes: bool, tls: TlsState, syms: &[&str]) -> KernelFacts {
        KernelFacts {
            release: format!("{}.{}.0", version.0, version.1),
            version: Some(version),
            machine: "x86_64".into(),
            btf: true,
            kprobes: if kprobes {
                Ok(())
            } else {
                Err("no kprobes".into())
            },
            tracefs: None,
            tls,
            symbols: syms.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
            tls_stat: None,
            privileges: Privileges {
                euid: 0,
                cap_sys_admin: true,
                cap_perfmon: true,
                cap_bpf: true,
            },
        }
    }

    fn attached(p: &Plan) -> Vec<&'static str> {
        p.to_attach().map(|s| s.probe.name()).collect()
    }

    fn decision(p: &Plan, probe: Probe) -> &Decision {
        &p.decisions
            .iter()
            .find(|(s, _)| s.probe == probe)
            .unwrap()
            .1
    }

    #[test]
    fn kernel_6_1_uses_sendpage_and_do_tcp_sendpages() {
        let f = facts(
            (6, 1),
            true,
            TlsState::Loaded,
            &[
                "do_sendfile",
                "tls_sw_sendmsg",
                "tls_sw_sendpage",
                "tcp_sendmsg",
                "tcp_sendmsg_locked",
                "do_tcp_sendpages",
            ],
        );
        let p = Plan::choose(&f, BackendChoice::Auto).unwrap();
        assert_eq!(p.backend, Backend::Kprobe);
        assert_eq!(
            attached(&p),
            vec![
                "do_sendfile",
                "tls_sw_sendpage",
                "tls_sw_sendmsg",
                "tcp_sendmsg",
                "do_tcp_sendpages",
                "tcp_sendmsg_locked"
            ]
        );
        assert!(
            matches!(decision(&p, Probe::TlsSwSpliceEof), Decision::Skip(w) if w.contains("6.5"))
        );
    }

    #[test]
    fn kernel_6_12_has_no_sendpage() {
        let f = facts(
            (6, 12),
            true,
            TlsState::Loaded,
            &[
                "do_sendfile",
                "tls_sw_sendmsg",
                "tls_sw_splice_eof",
                "tcp_sendmsg",
                "tcp_sendmsg_locked",
            ],
        );
        let p = Plan::choose(&f, BackendChoice::Auto).unwrap();
        assert!(attached(&p).contains(&"tcp_sendmsg_locked"));
        assert!(attached(&p).contains(&"tls_sw_splice_eof"));
        assert!(
            matches!(decision(&p, Probe::DoTcpSendpages), Decision::Skip(w) if w.contains("removed in 6.5"))
        );
    }

    #[test]
    fn tls_module_not_loaded_waits() {
        let f = facts(
            (6, 12),
            true,
            TlsState::Loadable("/lib/modules/x/tls.ko".into()),
            &["do_sendfile", "tcp_sendmsg", "tcp_sendmsg_locked"],
        );
        let p = Plan::choose(&f, BackendChoice::Auto).unwrap();
        assert_eq!(decision(&p, Probe::TlsSwSendmsg), &Decision::WaitForTls);
        assert_eq!(
            attached(&p),
            vec!["do_sendfile", "tcp_sendmsg", "tcp_sendmsg_locked"]
        );
    }

    #[test]
    fn no_kprobes_falls_back_or_fails_when_forced() {
        let f = facts(
            (6, 18),
            false,
            TlsState::Missing("no".into()),
            &["do_sendfile"],
        );
        let p = Plan::choose(&f, BackendChoice::Auto).unwrap();
        assert_eq!(p.backend, Backend::Tracepoint);
        assert_eq!(p.reduced_because.as_deref(), Some("no kprobes"));
        assert_eq!(attached(&p), vec!["sendfile64", "sock_send_length"]);
        assert!(p.mode_sentence(&f).starts_with("reduced mode"));
        assert!(matches!(
            Plan::choose(&f, BackendChoice::Kprobe),
            Err(PlanError::NoKprobes(_))
        ));
    }

    #[test]
    fn forced_tracepoints_on_a_kprobe_kernel() {
        let f = facts((6, 12), true, TlsState::Loaded, &["do_sendfile"]);
        let p = Plan::choose(&f, BackendChoice::Tracepoint).unwrap();
        assert_eq!(p.backend, Backend::Tracepoint);
    }

    #[test]
    fn catalogue_programs_are_unique() {
        let mut names = BTreeSet::new();
        for s in CATALOGUE {
            match s.attach {
                Attach::Kfunc { entry, ret, .. } => {
                    assert!(names.insert(entry) && names.insert(ret));
                }
                Attach::Tracepoint { enter, exit, .. } => {
                    assert!(names.insert(enter.0));
                    if let Some(e) = exit {
                        assert!(names.insert(e.0));
                    }
                }
            }
        }
        // Every probe has exactly one catalogue entry.
        for p in Probe::ALL {
            assert_eq!(
                CATALOGUE.iter().filter(|s| s.probe == p).count(),
                1,
                "{p:?}"
            );
        }
    }
}
