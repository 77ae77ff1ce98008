//! Which probes to attach on this kernel and why the others are not, and where each number
//! `top` and `verify` show comes from here (exact, derived, or missing): pure functions of
//! [`KernelFacts`] and the probe table (`ktls_trace_common::probes`), tested per kernel era
//! without that kernel.

use ktls_trace_common::probes::{Hook, PROBES, ProbeSpec, Role};
use ktls_trace_common::{OFF_UNKNOWN, Offsets, Probe};
use serde::Serialize;

use crate::kernel::{KernelFacts, TlsState};

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
    /// BPF trampolines (fentry/fexit) on the kernel's own functions where it takes them,
    /// kprobes on the rest (the tls module); fail without kprobes. Cheaper per call and
    /// no limit on calls in flight, but on preemptible kernels the kernel skips a program
    /// more often (each skip is counted): measured in docs/performance.md.
    Fentry,
    /// tracepoints only, even where kprobes exist.
    Tracepoint,
}

/// The decision for one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Attach,
    /// In the tls module, which is not loaded yet: attached when it appears.
    WaitForTls,
    /// Not on this kernel (or not needed in this mode); the string says why.
    Skip(String),
}

/// The attach plan for this kernel.
#[derive(Debug, Clone)]
pub struct Plan {
    pub backend: Backend,
    /// Why the backend is reduced, when it is.
    pub reduced_because: Option<String>,
    /// One decision per probe of the table, in table order.
    pub decisions: Vec<(Probe, Decision)>,
    /// The probe that stands for sendfile(2) (`do_sendfile`, or the syscall tracepoints).
    pub sendfile: Probe,
    /// Try BPF trampolines (fentry/fexit) for the probes that have them: asked for with
    /// `--backend fentry`, and the kernel has BTF. Each probe falls back to kprobes if
    /// the kernel refuses them.
    pub trampolines: bool,
    /// Kernel TLS ciphertext is derived from plaintext and records, not counted at the TCP
    /// pushes (which are then not probed): see [`Plan::derive_ciphertext`].
    pub ciphertext_derived: bool,
}

/// Why the TCP push probe is skipped when ciphertext is derived.
pub const CIPHERTEXT_DERIVED: &str =
    "not needed here: kernel TLS ciphertext is derived from its plaintext and records";

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
            (BackendChoice::Kprobe | BackendChoice::Fentry, Err(why)) => {
                return Err(PlanError::NoKprobes(why.clone()));
            }
            (_, Ok(())) => (Backend::Kprobe, None),
            (BackendChoice::Auto, Err(why)) => (Backend::Tracepoint, Some(why.clone())),
        };
        // do_sendfile is static: a build may inline it. The syscall tracepoints then stand
        // in (they cost every task's syscalls a slower path, hence only as the fallback).
        let do_sendfile = backend == Backend::Kprobe && facts.has_symbol("do_sendfile");
        let sendfile = if do_sendfile {
            Probe::DoSendfile
        } else {
            Probe::Sendfile64
        };
        let decisions: Vec<(Probe, Decision)> = PROBES
            .iter()
            .map(|s| (s.probe, decide(facts, s, backend, sendfile)))
            .collect();
        if !decisions
            .iter()
            .any(|(_, d)| matches!(d, Decision::Attach | Decision::WaitForTls))
        {
            let why = decisions
                .iter()
                .filter_map(|(p, d)| match d {
                    Decision::Skip(w) if p.spec().kprobe == (backend == Backend::Kprobe) => {
                        Some(format!("{}: {w}", p.name()))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(PlanError::Nothing(why));
        }
        Ok(Plan {
            backend,
            reduced_because,
            decisions,
            sendfile,
            trampolines: choice == BackendChoice::Fentry && backend == Backend::Kprobe && facts.btf,
            ciphertext_derived: false,
        })
    }

    /// For totals (`top`): stop probing the TCP pushes where the one number only they
    /// give, kernel TLS ciphertext, can be derived instead: each record adds a fixed
    /// overhead to its plaintext (TLS 1.2 AES-GCM 29 bytes, TLS 1.3 22; [`TlsParams`]),
    /// and every kernel TLS send tells its plaintext and the records it closed. The push
    /// probe is the costliest of all (it fires for every record pushed and every plain
    /// send; docs/performance.md), so this is most of top's cost in the kernel.
    ///
    /// Only from 6.5 on (`do_tcp_sendpages` gone, commit dc97391e6610): before, plain
    /// sendfile's bytes are counted at that push. Only with `tcp_sendmsg` probed (plain
    /// and user-space TLS traffic) and a kernel TLS send probe; the caller makes sure the
    /// record counts are readable (the tls module's layout is known). Returns whether it
    /// derives.
    ///
    /// [`TlsParams`]: crate::tls::TlsParams
    pub fn derive_ciphertext(&mut self) -> bool {
        let on = |p: Probe| {
            matches!(
                self.decision(p),
                Some(Decision::Attach | Decision::WaitForTls)
            )
        };
        if self.backend != Backend::Kprobe
            || on(Probe::DoTcpSendpages)
            || !on(Probe::TlsSwSendmsg)
            || self.decision(Probe::TcpSendmsg) != Some(&Decision::Attach)
        {
            return false;
        }
        if let Some((_, d)) = self
            .decisions
            .iter_mut()
            .find(|(p, _)| *p == Probe::TcpSendmsgLocked)
            && *d == Decision::Attach
        {
            *d = Decision::Skip(CIPHERTEXT_DERIVED.into());
            self.ciphertext_derived = true;
        }
        self.ciphertext_derived
    }

    /// Does the plan attach a tracepoint (which needs tracefs for its id)?
    pub fn attaches_tracepoints(&self) -> bool {
        PROBES.iter().any(|s| {
            !matches!(s.hook, Hook::Kfunc(_)) && self.decision(s.probe) == Some(&Decision::Attach)
        })
    }

    pub fn decision(&self, probe: Probe) -> Option<&Decision> {
        self.decisions
            .iter()
            .find(|(p, _)| *p == probe)
            .map(|(_, d)| d)
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

fn decide(facts: &KernelFacts, s: &ProbeSpec, backend: Backend, sendfile: Probe) -> Decision {
    match (s.hook, backend) {
        (Hook::Kfunc(_), Backend::Tracepoint) => {
            Decision::Skip("kprobes are not used in tracepoint mode".into())
        }
        (Hook::Kfunc(f), Backend::Kprobe) => {
            if facts.has_symbol(f) {
                Decision::Attach
            } else if s.in_tls_module && !facts.tls.is_active() {
                if facts.tls.is_available() {
                    Decision::WaitForTls
                } else {
                    Decision::Skip(format!("kernel TLS {}", facts.tls.describe()))
                }
            } else {
                Decision::Skip(absent_because(s, facts.version))
            }
        }
        (_, Backend::Kprobe) if s.role == Role::Sendfile && sendfile != s.probe => {
            Decision::Skip("do_sendfile is probed instead".into())
        }
        (_, Backend::Kprobe) if s.role != Role::Sendfile => {
            Decision::Skip("tracepoint mode only: the kprobes see more".into())
        }
        (Hook::Syscall(name), _) => tracepoint(facts, "syscalls", &format!("sys_enter_{name}")),
        (Hook::Tracepoint { category, name }, _) => tracepoint(facts, category, name),
    }
}

fn tracepoint(facts: &KernelFacts, category: &str, name: &str) -> Decision {
    // Without tracefs mounted we cannot check; the tracer mounts it first.
    if facts.tracefs.is_none()
        || crate::kernel::tracepoint_exists(facts.tracefs.as_deref(), category, name)
    {
        Decision::Attach
    } else {
        Decision::Skip(format!("tracepoint {category}:{name} not in this kernel"))
    }
}

/// Why a function of the table is not in this kernel, in the table's own words.
fn absent_because(s: &ProbeSpec, version: Option<(u32, u32)>) -> String {
    let v = |(a, b): (u32, u32)| format!("{a}.{b}");
    match (version, s.since, s.until) {
        (Some(k), _, Some(u)) if k >= u => format!("not in this kernel: removed in {}", v(u)),
        (Some(k), Some(from), _) if k < from => match s.unless {
            Some(why) => format!("not in this kernel ({why})"),
            None => format!("not in this kernel: added in {}", v(from)),
        },
        _ => match s.unless {
            Some(why) => format!("not in this kernel's symbol table ({why})"),
            None => "not in this kernel's symbol table (inlined or renamed in this build)".into(),
        },
    }
}

/// What the user loses without a probe (one line when it is lost).
pub fn loss(p: Probe) -> &'static str {
    match p.role() {
        Role::Sendfile => "sendfile calls, bytes and latency",
        Role::KtlsSend => "kernel TLS plaintext, its path, records and TLS send latency",
        Role::KtlsFlush => "records closed at the end of a splice",
        Role::KtlsDevice => "NIC-offloaded kernel TLS",
        Role::TcpSend => "plain and user-space TLS traffic",
        Role::TcpPush => "kernel TLS ciphertext (TLS-OUT)",
        Role::SockSend => "socket send bytes",
    }
}

/// Where a number comes from on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", content = "how", rename_all = "lowercase")]
pub enum Source {
    /// Counted where it happens.
    Exact(String),
    /// Computed from other facts.
    Derived(String),
    /// Not yet known: waits for something (the tls module).
    Pending(String),
    /// Not available here.
    Missing(String),
}

impl Source {
    pub fn is_missing(&self) -> bool {
        matches!(self, Source::Missing(_))
    }
}

/// One number `top` or `verify` shows, and its source here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Number {
    pub number: &'static str,
    #[serde(flatten)]
    pub source: Source,
}

/// What the programs can read on this kernel beyond function arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsLayoutState {
    /// `struct tls_context` was found in BTF: version, cipher and record sequence number;
    /// the string says where (for doctor).
    Known(String),
    /// The tls module is not loaded yet.
    Waiting,
    /// Not readable; the string says why.
    Unknown(String),
}

/// Where every number comes from with this plan, these struct offsets and this kernel TLS
/// layout.
pub fn numbers(plan: &Plan, off: &Offsets, tls: &TlsLayoutState) -> Vec<Number> {
    let state = |p: Probe| {
        plan.decision(p)
            .cloned()
            .unwrap_or(Decision::Skip(String::new()))
    };
    let attached = |p: Probe| state(p) == Decision::Attach;
    let pending = |p: Probe| state(p) == Decision::WaitForTls;
    let any_of = |probes: &[Probe]| probes.iter().copied().find(|p| attached(*p));
    let waiting_of = |probes: &[Probe]| probes.iter().any(|p| pending(*p));
    let known = |o: u32| o != OFF_UNKNOWN;
    let names = |probes: &[Probe]| {
        probes
            .iter()
            .filter(|p| attached(**p) || pending(**p))
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let ktls_sends = [Probe::TlsSwSendpage, Probe::TlsSwSendmsg];
    let pushes = [Probe::DoTcpSendpages, Probe::TcpSendmsgLocked];
    let tls_missing = || {
        Source::Missing(match (plan.backend, state(Probe::TlsSwSendmsg)) {
            (Backend::Tracepoint, _) => {
                "tracepoint mode: the kernel TLS functions need kprobes".into()
            }
            // Why the kTLS functions are not there: kernel TLS missing, or the build.
            (Backend::Kprobe, Decision::Skip(why)) if !why.is_empty() => why,
            _ => "no kernel TLS send function on this kernel".into(),
        })
    };
    let tls_source = |exact: Source| {
        if any_of(&ktls_sends).is_some() {
            exact
        } else if waiting_of(&ktls_sends) {
            Source::Pending("attached when the tls module is loaded".into())
        } else {
            tls_missing()
        }
    };

    let mut v = Vec::new();
    let mut push = |number: &'static str, source: Source| v.push(Number { number, source });

    push(
        "sendfile calls, bytes, latency",
        match plan.sendfile {
            p if attached(p) && p == Probe::DoSendfile => Source::Exact("do_sendfile".into()),
            p if attached(p) => Source::Exact(
                "syscalls:sendfile64 tracepoints (do_sendfile is not a symbol here, or no kprobes)"
                    .into(),
            ),
            _ => Source::Missing("neither do_sendfile nor the sendfile64 tracepoints".into()),
        },
    );
    push(
        "kernel TLS plaintext (TLS-IN)",
        tls_source(Source::Exact(names(&ktls_sends))),
    );
    push(
        "zero-copy path (splice vs write)",
        tls_source(if known(off.msghdr_flags) {
            Source::Exact("tls_sw_sendpage, or MSG_SPLICE_PAGES in msghdr.msg_flags".into())
        } else {
            Source::Derived("nesting: a kTLS send inside sendfile is the splice path".into())
        }),
    );
    push(
        "kernel TLS ciphertext (TLS-OUT)",
        if plan.ciphertext_derived {
            tls_source(Source::Derived(
                "plaintext + records × the record overhead of the socket's TLS version and cipher (the TCP pushes are not probed)".into(),
            ))
        } else if any_of(&pushes).is_some() {
            if any_of(&ktls_sends).is_some() || waiting_of(&ktls_sends) {
                Source::Exact(names(&pushes))
            } else {
                tls_missing()
            }
        } else {
            tls_missing()
        },
    );
    let layout = |exact: &str, with_where: bool| match tls {
        TlsLayoutState::Known(where_) if with_where => Source::Exact(format!("{exact} ({where_})")),
        TlsLayoutState::Known(_) => Source::Exact(exact.into()),
        TlsLayoutState::Waiting => {
            Source::Pending("read from the tls module's BTF once it is loaded".into())
        }
        TlsLayoutState::Unknown(why) => Source::Missing(why.clone()),
    };
    push(
        "TLS records (REC/s, AVG-REC)",
        tls_source(layout(
            "the socket's TLS record sequence number, before and after each kTLS send",
            true,
        )),
    );
    push(
        "TLS version and cipher",
        tls_source(layout("tls_context.prot_info of the socket", false)),
    );
    push(
        "user-space TLS vs plain",
        if !attached(Probe::TcpSendmsg) {
            if plan.backend == Backend::Tracepoint {
                Source::Missing("tracepoint mode: all socket sends count as plain".into())
            } else {
                Source::Missing("tcp_sendmsg is not probed".into())
            }
        } else if known(off.msghdr_iter) && known(off.iter_type) && known(off.iter_iov) {
            Source::Exact("the first bytes tcp_sendmsg sends (a TLS record header?)".into())
        } else {
            Source::Missing("struct iov_iter is not readable here: all sends count as plain".into())
        },
    );
    push(
        "TLS send latency",
        tls_source(Source::Exact(names(&ktls_sends))),
    );
    push(
        "connection addresses",
        if known(off.skc_family) && known(off.skc_num) && known(off.skc_daddr) {
            Source::Exact("struct sock_common of each socket".into())
        } else {
            Source::Missing("struct sock_common is not readable here".into())
        },
    );
    push(
        "--comm matches the process name",
        if known(off.task_group_leader) && known(off.task_comm) {
            Source::Exact("the thread-group leader's comm".into())
        } else {
            Source::Derived("thread names only (task_struct is not readable here)".into())
        },
    );
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::kernel::Privileges;

    pub(crate) fn facts(
        version: (u32, u32),
        kprobes: bool,
        tls: TlsState,
        syms: &[&str],
    ) -> KernelFacts {
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
                cap_net_admin: true,
                perf_event_paranoid: Some(2),
            },
        }
    }

    /// The probed functions of a 6.1 kernel with kernel TLS (sendpage era).
    const SYMBOLS_6_1: [&str; 6] = [
        "do_sendfile",
        "tls_sw_sendmsg",
        "tls_sw_sendpage",
        "tcp_sendmsg",
        "tcp_sendmsg_locked",
        "do_tcp_sendpages",
    ];

    fn attached(p: &Plan) -> Vec<&'static str> {
        p.decisions
            .iter()
            .filter(|(_, d)| *d == Decision::Attach)
            .map(|(p, _)| p.name())
            .collect()
    }

    const OFF: Offsets = Offsets {
        msghdr_flags: 72,
        msghdr_iter: 16,
        iter_type: 0,
        iter_iov: 16,
        skc_family: 16,
        skc_num: 14,
        skc_daddr: 0,
        task_group_leader: 1000,
        task_comm: 2000,
        ..Offsets::UNKNOWN
    };

    fn source<'a>(n: &'a [Number], what: &str) -> &'a Source {
        &n.iter()
            .find(|x| x.number.starts_with(what))
            .unwrap()
            .source
    }

    #[test]
    fn kernel_6_1_uses_sendpage_and_do_tcp_sendpages() {
        let f = facts((6, 1), true, TlsState::Loaded, &SYMBOLS_6_1);
        let p = Plan::choose(&f, BackendChoice::Auto).unwrap();
        assert_eq!(p.backend, Backend::Kprobe);
        assert_eq!(p.sendfile, Probe::DoSendfile);
        assert_eq!(
            attached(&p),
            vec![
                "do_sendfile",
                "tls_sw_sendmsg",
                "tls_sw_sendpage",
                "tcp_sendmsg",
                "tcp_sendmsg_locked",
                "do_tcp_sendpages"
            ]
        );
        assert!(
            matches!(p.decision(Probe::TlsSwSpliceEof), Some(Decision::Skip(w)) if w.contains("6.1 stable")),
            "{:?}",
            p.decision(Probe::TlsSwSpliceEof)
        );
        assert!(
            matches!(p.decision(Probe::Sendfile64), Some(Decision::Skip(w)) if w.contains("do_sendfile is probed"))
        );
        assert!(
            !p.attaches_tracepoints(),
            "kprobes alone: no tracefs needed"
        );
        let n = numbers(&p, &OFF, &TlsLayoutState::Known("test".into()));
        assert_eq!(
            source(&n, "kernel TLS ciphertext"),
            &Source::Exact("do_tcp_sendpages + tcp_sendmsg_locked".into())
        );
        assert!(
            n.iter().all(|n| matches!(n.source, Source::Exact(_))),
            "{n:#?}"
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
            matches!(p.decision(Probe::DoTcpSendpages), Some(Decision::Skip(w)) if w.contains("removed in 6.5"))
        );
    }

    #[test]
    fn newest_kernels_inline_static_functions_without_losing_a_number() {
        // 7.2+: tls_push_record is gone (nothing depends on it), and a build that inlines
        // do_sendfile gets the sendfile numbers from the syscall tracepoints.
        let f = facts(
            (7, 3),
            true,
            TlsState::Loaded,
            &[
                "tls_sw_sendmsg",
                "tls_sw_splice_eof",
                "tcp_sendmsg",
                "tcp_sendmsg_locked",
            ],
        );
        let p = Plan::choose(&f, BackendChoice::Auto).unwrap();
        assert_eq!(p.sendfile, Probe::Sendfile64);
        assert!(attached(&p).contains(&"sendfile64"));
        // The kprobe mode then needs tracefs too (Tracer::start mounts it).
        assert!(p.attaches_tracepoints());
        assert!(
            matches!(p.decision(Probe::DoSendfile), Some(Decision::Skip(w)) if w.contains("inlined")),
            "{:?}",
            p.decision(Probe::DoSendfile)
        );
        let n = numbers(&p, &OFF, &TlsLayoutState::Known("test".into()));
        assert!(n.iter().all(|n| !n.source.is_missing()), "{n:#?}");
        assert!(matches!(source(&n, "sendfile"), Source::Exact(s) if s.contains("tracepoints")));
    }

    /// top derives ciphertext where it can: from 6.5 on (6.12, 7.3), never before (6.1's
    /// do_tcp_sendpages also carries plain sendfile), nor without kernel TLS or kprobes.
    #[test]
    fn ciphertext_is_derived_from_6_5_on_only() {
        let sendmsg_era = [
            "do_sendfile",
            "tls_sw_sendmsg",
            "tls_sw_splice_eof",
            "tcp_sendmsg",
            "tcp_sendmsg_locked",
        ];
        for v in [(6, 12), (7, 3)] {
            let mut p = Plan::choose(
                &facts(v, true, TlsState::Loaded, &sendmsg_era),
                BackendChoice::Auto,
            )
            .unwrap();
            assert!(p.derive_ciphertext(), "{v:?}");
            assert!(p.ciphertext_derived);
            assert!(!attached(&p).contains(&"tcp_sendmsg_locked"), "{v:?}");
            assert!(attached(&p).contains(&"tcp_sendmsg"));
            assert_eq!(
                p.decision(Probe::TcpSendmsgLocked),
                Some(&Decision::Skip(CIPHERTEXT_DERIVED.into()))
            );
            let n = numbers(&p, &OFF, &TlsLayoutState::Known("test".into()));
            assert!(
                matches!(source(&n, "kernel TLS ciphertext"), Source::Derived(w) if w.contains("records")),
                "{n:#?}"
            );
            // Deriving twice changes nothing.
            let before = p.clone();
            assert!(p.derive_ciphertext());
            assert_eq!(p.decisions, before.decisions);
        }
        let keep = |f: KernelFacts, choice| {
            let mut p = Plan::choose(&f, choice).unwrap();
            let before = p.decisions.clone();
            assert!(!p.derive_ciphertext(), "{}", f.release);
            assert!(!p.ciphertext_derived);
            assert_eq!(p.decisions, before, "{}", f.release);
        };
        // 6.1: plain sendfile's bytes are counted at do_tcp_sendpages.
        keep(
            facts((6, 1), true, TlsState::Loaded, &SYMBOLS_6_1),
            BackendChoice::Auto,
        );
        // No kernel TLS: nothing to derive from.
        keep(
            facts(
                (6, 12),
                true,
                TlsState::Missing("kernel built without CONFIG_TLS".into()),
                &["do_sendfile", "tcp_sendmsg", "tcp_sendmsg_locked"],
            ),
            BackendChoice::Auto,
        );
        // Tracepoint mode probes no pushes anyway.
        keep(
            facts((6, 12), true, TlsState::Loaded, &sendmsg_era),
            BackendChoice::Tracepoint,
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
        assert_eq!(p.decision(Probe::TlsSwSendmsg), Some(&Decision::WaitForTls));
        assert_eq!(
            attached(&p),
            vec!["do_sendfile", "tcp_sendmsg", "tcp_sendmsg_locked"]
        );
        let n = numbers(&p, &OFF, &TlsLayoutState::Waiting);
        assert!(matches!(source(&n, "TLS records"), Source::Pending(_)));
        assert!(matches!(
            source(&n, "kernel TLS plaintext"),
            Source::Pending(_)
        ));
    }

    #[test]
    fn kernel_5_10_without_tls() {
        let f = facts(
            (5, 10),
            true,
            TlsState::Missing("kernel built without CONFIG_TLS".into()),
            &[
                "do_sendfile",
                "tcp_sendmsg",
                "tcp_sendmsg_locked",
                "do_tcp_sendpages",
            ],
        );
        let p = Plan::choose(&f, BackendChoice::Auto).unwrap();
        assert!(
            matches!(p.decision(Probe::TlsSwSendmsg), Some(Decision::Skip(w)) if w.contains("CONFIG_TLS"))
        );
        let n = numbers(&p, &OFF, &TlsLayoutState::Unknown("no tls module".into()));
        assert!(
            matches!(source(&n, "kernel TLS plaintext"), Source::Missing(w) if w.contains("CONFIG_TLS")),
            "{n:#?}"
        );
        assert!(source(&n, "kernel TLS ciphertext").is_missing());
        assert!(matches!(source(&n, "user-space TLS"), Source::Exact(_)));
        assert!(matches!(source(&n, "sendfile"), Source::Exact(_)));
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
        assert_eq!(p.sendfile, Probe::Sendfile64);
        assert_eq!(p.reduced_because.as_deref(), Some("no kprobes"));
        assert_eq!(attached(&p), vec!["sendfile64", "sock_send_length"]);
        assert!(p.attaches_tracepoints());
        assert!(p.mode_sentence(&f).starts_with("reduced mode"));
        for forced in [BackendChoice::Kprobe, BackendChoice::Fentry] {
            assert!(matches!(
                Plan::choose(&f, forced),
                Err(PlanError::NoKprobes(_))
            ));
        }
        let n = numbers(&p, &OFF, &TlsLayoutState::Unknown("no".into()));
        assert!(source(&n, "kernel TLS plaintext").is_missing());
        assert!(source(&n, "user-space TLS").is_missing());
    }

    /// Trampolines only when asked for, and only with the kernel's BTF.
    #[test]
    fn trampolines_are_asked_for() {
        let mut f = facts((6, 12), true, TlsState::Loaded, &["do_sendfile"]);
        f.btf = true;
        let t = |f: &KernelFacts, c| Plan::choose(f, c).map(|p| p.trampolines).ok();
        assert_eq!(t(&f, BackendChoice::Fentry), Some(true));
        assert_eq!(t(&f, BackendChoice::Auto), Some(false));
        assert_eq!(t(&f, BackendChoice::Kprobe), Some(false));
        assert_eq!(t(&f, BackendChoice::Tracepoint), Some(false));
        f.btf = false;
        assert_eq!(t(&f, BackendChoice::Fentry), Some(false));
    }

    #[test]
    fn forced_tracepoints_on_a_kprobe_kernel() {
        let f = facts((6, 12), true, TlsState::Loaded, &["do_sendfile"]);
        let p = Plan::choose(&f, BackendChoice::Tracepoint).unwrap();
        assert_eq!(p.backend, Backend::Tracepoint);
        assert_eq!(attached(&p), vec!["sendfile64", "sock_send_length"]);
    }

    #[test]
    fn every_probe_has_a_decision_and_a_loss() {
        let f = facts((6, 12), true, TlsState::Loaded, &[]);
        let p = Plan::choose(&f, BackendChoice::Auto).unwrap();
        assert_eq!(p.decisions.len(), Probe::ALL.len());
        for probe in Probe::ALL {
            assert!(!loss(probe).is_empty());
        }
    }
}
