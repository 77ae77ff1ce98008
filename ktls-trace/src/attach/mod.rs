//! The probe side at run time: loads the embedded eBPF object with this kernel's offsets
//! ([`Config`]), attaches what the [`Plan`] says, picks up the tls module when it appears
//! (its probes, and where kernel TLS keeps a socket's state), and hands the ring buffer to
//! the session. Dropping the [`Tracer`] detaches everything (aya owns the links; the kernel
//! also detaches them if the process dies).

mod aggregates;
mod links;
mod offsets;
pub mod progstats;
mod unpreempted;

pub use aggregates::{AggregateError, RawAggregates};

use std::{
    io,
    os::fd::AsFd as _,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, KProbe, ProgramError, TracePoint},
};
use ktls_trace_common::{
    COMM_LEN, CONFIG_SYMBOL, Config, Offsets, Probe, SockInfo, TlsLayout, maps, probes::Hook, stat,
};
use tokio::io::unix::AsyncFd;

use self::links::{LinkId, LinkRef};
use crate::{
    btf::Btf,
    event::Comm,
    kernel::{self, KernelFacts},
    plan::{self, Backend, BackendChoice, Decision, Number, Plan, PlanError, TlsLayoutState},
    sockdiag::Endpoints,
};

/// The eBPF object, built by build.rs through aya-build.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ktls-trace-ebpf"));

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// NEED_PRIVILEGES, or why the capabilities held are not enough here.
    #[error("{0}")]
    Privileges(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
}

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    pub backend: BackendChoice,
    /// Process ids (tgids); empty = all processes.
    pub pids: Vec<u32>,
    /// Only tasks whose thread or process name is this.
    pub comm: Option<String>,
    /// Emit aya-log debug records from the programs.
    pub debug: bool,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: Option<u32>,
    /// Wake the reader only when this many bytes wait; the reader must then also drain
    /// on a timer (the session does). 0: wake per event.
    pub wakeup_bytes: u64,
    /// Add completed calls up in the kernel (`AGG`, `LAT`) instead of sending events:
    /// read with [`Tracer::read_aggregates`].
    pub aggregate: bool,
    /// Size of the in-kernel totals map `AGG` in keys (None: the object's 8,192).
    pub aggregate_keys: Option<u32>,
    /// Derive kernel TLS ciphertext from plaintext and records instead of probing the
    /// TCP pushes, where the kernel allows ([`Plan::derive_ciphertext`]; `top`).
    pub derive_ciphertext: bool,
}

/// Default [`TraceOptions::wakeup_bytes`]: about 2,700 events, a small part of the
/// default 8 MiB ring, so a burst wakes the reader long before the ring fills.
pub const WAKEUP_BYTES: u64 = 256 << 10;

/// A probe that could not be loaded or attached, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub probe: Probe,
    pub why: String,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lost: {}; no {} from it",
            self.probe.name(),
            self.why,
            plan::loss(self.probe)
        )
    }
}

/// A change while tracing that the user should hear about (one line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Attached(Probe),
    Lost(Lost),
    /// The tls module's BTF was read (or could not be): records, version, cipher.
    TlsLayout(Result<(), String>),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Attached(p) => write!(f, "attached {}", p.name()),
            Notice::Lost(l) => l.fmt(f),
            Notice::TlsLayout(Ok(())) => f.write_str(
                "kernel TLS records, version and cipher are read from the tls module's BTF",
            ),
            Notice::TlsLayout(Err(why)) => {
                write!(f, "no TLS records, version or cipher on this kernel: {why}")
            }
        }
    }
}

/// Turns an aya error into words a user can act on (never a raw errno); the verifier's
/// log goes to the debug log (`-vv`).
pub fn explain(err: &ProgramError) -> String {
    fn errno_words(e: &io::Error) -> String {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "permission denied, even with this process's privileges".to_string()
            }
            Some(libc::ENOENT) => "the kernel has no such function or event".to_string(),
            Some(libc::EINVAL) => "the kernel rejected the request as invalid".to_string(),
            Some(libc::EBUSY) => "the probe point is busy".to_string(),
            Some(libc::E2BIG) => "the program is too large for this kernel".to_string(),
            Some(524) | Some(libc::EOPNOTSUPP) => "not supported by this kernel".to_string(),
            _ => "the kernel refused it".to_string(),
        }
    }
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                // No verifier output: the kernel refused before verifying (e.g. fentry
                // without the ftrace support it needs).
                format!("the kernel refused to load it ({})", errno_words(io_error))
            } else {
                let last = verifier_reason(&log);
                log::debug!("verifier log:\n{log}");
                format!(
                    "the kernel's verifier rejected the program ({}: \"{}\"; -vv prints its log)",
                    errno_words(io_error),
                    last.trim()
                )
            }
        }
        ProgramError::SyscallError(e) => errno_words(&e.io_error),
        other => {
            // Walk the source chain for an io::Error to name.
            let mut src: Option<&dyn std::error::Error> = Some(other);
            while let Some(e) = src {
                if let Some(io) = e.downcast_ref::<io::Error>() {
                    if io.kind() == io::ErrorKind::NotFound {
                        return "the kernel has no kprobe/tracepoint support for this (missing in /sys)"
                            .to_string();
                    }
                    return errno_words(io);
                }
                src = e.source();
            }
            "the kernel refused it".to_string()
        }
    }
}

/// The line of a verifier log that says why: the last one that is not a statistic
/// ("processed N insns ...", "verification time ...", "stack depth ...").
fn verifier_reason(log: &str) -> &str {
    log.lines()
        .map(str::trim)
        .rev()
        .find(|l| {
            !l.is_empty()
                && ![
                    "processed ",
                    "verification time",
                    "stack depth",
                    "max_states",
                ]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .unwrap_or("")
}

/// [`Config`] as an aya global.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodConfig(Config);
// SAFETY: Config is repr(C) integers and byte arrays without padding (size asserted in
// ktls-trace-common), so any bytes are a valid value.
unsafe impl Pod for PodConfig {}

/// [`TlsLayout`] as an aya map value.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodTlsLayout(TlsLayout);
// SAFETY: as for PodConfig: repr(C) u32s, no padding.
unsafe impl Pod for PodTlsLayout {}

/// `SockInfo` as an aya map value.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodSockInfo(SockInfo);
// SAFETY: SockInfo is repr(C) plain integers and byte arrays without padding (size
// asserted in ktls-trace-common), so any bytes are a valid value.
unsafe impl Pod for PodSockInfo {}

/// This run's [`Config`].
fn config(offsets: &Offsets, opts: &TraceOptions, sendfile: Probe) -> Config {
    let mut comm = [0u8; COMM_LEN];
    if let Some(c) = &opts.comm {
        // The kernel keeps 15 characters of a command name.
        let b = c.as_bytes();
        let n = b.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&b[..n]);
    }
    let key = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (std::process::id() as u64).rotate_left(32);
    Config {
        sock_key: key,
        wakeup_bytes: opts.wakeup_bytes,
        filter_pids: u8::from(!opts.pids.is_empty()),
        filter_comm: u8::from(opts.comm.is_some()),
        debug: u8::from(opts.debug),
        sendfile_probe: sendfile as u8,
        aggregate: u8::from(opts.aggregate),
        comm,
        off: *offsets,
        ..Config::DEFAULT
    }
}

/// Loads the object with this run's configuration (maps are created; no program is
/// loaded into the kernel yet).
fn load_object(cfg: &Config, opts: &TraceOptions) -> Result<Ebpf, TracerError> {
    let config = PodConfig(*cfg);
    let mut loader = EbpfLoader::new();
    loader.override_global(CONFIG_SYMBOL, &config, true);
    if let Some(bytes) = opts.ring_bytes {
        loader.map_max_entries(maps::EVENTS, bytes);
    }
    if let Some(keys) = opts.aggregate_keys {
        loader.map_max_entries(maps::AGG, keys.max(1));
    }
    loader.load(EBPF_OBJECT).map_err(|e| {
        let words = match &e {
            aya::EbpfError::MapError(_) => "the kernel refused to create the BPF maps".to_string(),
            other => {
                let io = std::error::Error::source(other)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .map(|io| io.kind());
                match io {
                    Some(io::ErrorKind::PermissionDenied) => kernel::NEED_PRIVILEGES.to_string(),
                    _ => "the kernel refused the eBPF object".to_string(),
                }
            }
        };
        log::debug!("EbpfLoader::load: {e:?}");
        TracerError::Load(words)
    })
}

/// The programs of a probe, by the table's naming rule: `(program, attach point)`.
pub fn programs(p: Probe) -> Vec<(String, AttachPoint)> {
    match p.spec().hook {
        // Return side first: a return without a recorded entry is simply ignored, while an
        // entry whose return probe is not there yet would linger in ACTIVE.
        Hook::Kfunc(f) => vec![
            (format!("{f}_ret"), AttachPoint::Kretprobe(f)),
            (format!("{f}_entry"), AttachPoint::Kprobe(f)),
        ],
        Hook::Syscall(s) => vec![
            (
                format!("sys_exit_{s}"),
                AttachPoint::Tracepoint("syscalls", format!("sys_exit_{s}")),
            ),
            (
                format!("sys_enter_{s}"),
                AttachPoint::Tracepoint("syscalls", format!("sys_enter_{s}")),
            ),
        ],
        Hook::Tracepoint { category, name } => {
            vec![(
                name.to_string(),
                AttachPoint::Tracepoint(category, name.to_string()),
            )]
        }
    }
}

/// The BPF trampoline programs of a probe on a vmlinux function (fexit first, for the
/// same reason as the kretprobe), if the object has them.
pub fn trampoline_programs(p: Probe) -> Option<Vec<(String, AttachPoint)>> {
    let spec = p.spec();
    match (spec.hook, spec.trampoline_args) {
        (Hook::Kfunc(f), Some(_)) => Some(vec![
            (format!("{f}_fexit"), AttachPoint::FExit(f)),
            (format!("{f}_fentry"), AttachPoint::FEntry(f)),
        ]),
        _ => None,
    }
}

/// Where one program attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachPoint {
    Kprobe(&'static str),
    Kretprobe(&'static str),
    FEntry(&'static str),
    FExit(&'static str),
    Tracepoint(&'static str, String),
}

/// How a probe's programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// kprobe + kretprobe (or the tracepoints of tracepoint mode).
    Probes,
    /// BPF trampolines: fentry + fexit.
    Trampolines,
}

/// What trampolines need: the kernel's BTF as aya reads it (to find the function), and
/// as we read it (to check the function takes the arguments the programs read).
#[derive(Clone, Copy)]
struct TrampolineBtf<'a> {
    aya: &'a aya::Btf,
    ours: &'a Btf,
}

/// One load or attach step: the full error goes to the debug log, words to the user.
fn step<T>(what: std::fmt::Arguments<'_>, r: Result<T, ProgramError>) -> Result<T, String> {
    r.map_err(|e| {
        log::debug!("{what}: {e:?}");
        explain(&e)
    })
}

/// Loads (verifies) and attaches the programs of one probe: as BPF trampolines where
/// `tramp` is given, the probe has them and the kernel's BTF agrees on its arguments;
/// otherwise, or if the kernel refuses the trampolines, as kprobes (or tracepoints).
fn attach_probe(
    ebpf: &mut Ebpf,
    probe: Probe,
    tramp: Option<TrampolineBtf<'_>>,
) -> Result<(Via, Vec<LinkRef>), String> {
    if let (Some(t), Some(progs), Some(want)) = (
        tramp,
        trampoline_programs(probe),
        probe.spec().trampoline_args,
    ) {
        let Hook::Kfunc(f) = probe.spec().hook else {
            return Err(format!("{} is not a kernel function", probe.name()));
        };
        match t.ours.function_params(f) {
            Some(n) if n == want as usize => match attach_programs(ebpf, &progs, Some(t.aya)) {
                Ok(links) => return Ok((Via::Trampolines, links)),
                Err(why) => {
                    for (name, _) in &progs {
                        unload(ebpf, name);
                    }
                    log::info!("{f}: no BPF trampolines ({why}); kprobes instead");
                }
            },
            n => log::info!(
                "{f}: no BPF trampolines (the kernel's BTF gives it {} arguments, the programs read {want}); kprobes instead",
                n.map_or("no".to_string(), |n| n.to_string())
            ),
        }
    }
    attach_programs(ebpf, &programs(probe), None).map(|links| (Via::Probes, links))
}

/// Detaches and unloads a program if it was loaded (a half-attached trampoline pair).
fn unload(ebpf: &mut Ebpf, name: &str) {
    let r = match ebpf.program_mut(name) {
        Some(aya::programs::Program::FEntry(p)) => p.unload(),
        Some(aya::programs::Program::FExit(p)) => p.unload(),
        Some(aya::programs::Program::KProbe(p)) => p.unload(),
        _ => Ok(()),
    };
    if let Err(e) = r {
        log::debug!("unloading {name}: {e:?}");
    }
}

/// Loads and attaches programs in order; returns their links, in that order. On an error
/// the links made so far stay with their programs (aya detaches them when the programs
/// go; a half-attached trampoline pair is unloaded by the caller).
fn attach_programs(
    ebpf: &mut Ebpf,
    progs: &[(String, AttachPoint)],
    btf: Option<&aya::Btf>,
) -> Result<Vec<LinkRef>, String> {
    let mut made = Vec::new();
    for (name, at) in progs {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the eBPF object"))?;
        match at {
            AttachPoint::Kprobe(f) | AttachPoint::Kretprobe(f) => {
                let p: &mut KProbe = prog.try_into().map_err(|e: ProgramError| explain(&e))?;
                step(format_args!("loading {name}"), p.load())?;
                let id = step(format_args!("attaching {name} to {f}"), p.attach(*f, 0))?;
                made.push((name, LinkId::KProbe(id)));
            }
            AttachPoint::FEntry(f) => {
                let btf = btf.ok_or("no kernel BTF")?;
                let p: &mut FEntry = prog.try_into().map_err(|e: ProgramError| explain(&e))?;
                step(format_args!("loading {name}"), p.load(f, btf))?;
                let id = step(format_args!("attaching {name}"), p.attach())?;
                made.push((name, LinkId::FEntry(id)));
            }
            AttachPoint::FExit(f) => {
                let btf = btf.ok_or("no kernel BTF")?;
                let p: &mut FExit = prog.try_into().map_err(|e: ProgramError| explain(&e))?;
                step(format_args!("loading {name}"), p.load(f, btf))?;
                let id = step(format_args!("attaching {name}"), p.attach())?;
                made.push((name, LinkId::FExit(id)));
            }
            AttachPoint::Tracepoint(category, tp) => {
                let p: &mut TracePoint = prog.try_into().map_err(|e: ProgramError| explain(&e))?;
                step(format_args!("loading {name}"), p.load())?;
                let id = step(
                    format_args!("attaching {name} to {category}:{tp}"),
                    p.attach(category, tp),
                )?;
                made.push((name, LinkId::TracePoint(id)));
            }
        }
    }
    Ok(made
        .into_iter()
        .map(|(program, id)| LinkRef {
            program: program.clone(),
            id,
        })
        .collect())
}

/// Events the kernel side lost, by cause (summed over CPUs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Losses {
    /// The ring buffer was full.
    pub ring_full: u64,
    /// The table of calls in flight was full.
    pub in_flight_full: u64,
    /// The in-kernel aggregate maps were full (aggregate mode).
    pub aggregates_full: u64,
    /// Calls whose return side never ran, per probe (only those with some): a kretprobe
    /// has a fixed number of instances (`maxactive`), or the kernel skipped the return
    /// program (below). Found when the thread next enters the function.
    pub returns_missed: Vec<(Probe, u64)>,
    /// Calls whose entry program the kernel did not run (`recursion_misses` of the
    /// program, 5.12+): another BPF program, or a bpf() call touching maps, held the CPU.
    /// kprobe programs share one such guard per CPU; trampolines have one per program.
    pub entries_skipped: Vec<(Probe, u64)>,
    /// Return programs the kernel did not run, likewise: already in `returns_missed`
    /// (or about to be); kept apart to say why returns were missed.
    pub returns_skipped: Vec<(Probe, u64)>,
}

fn sum_of(v: &[(Probe, u64)]) -> u64 {
    v.iter().map(|(_, n)| n).sum()
}

fn by_probe(v: &[(Probe, u64)]) -> String {
    v.iter()
        .map(|(p, n)| format!("{} {n}", p.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Losses {
    pub fn returns_missed(&self) -> u64 {
        sum_of(&self.returns_missed)
    }

    pub fn entries_skipped(&self) -> u64 {
        sum_of(&self.entries_skipped)
    }

    /// Where calls were lost at the probes, for a warning: `returns missed: do_sendfile
    /// 2 (1 return skipped by the kernel); entries skipped by the kernel: tcp_sendmsg 1`.
    pub fn at_probes(&self) -> String {
        let mut parts = Vec::new();
        if !self.returns_missed.is_empty() {
            let mut s = format!("returns missed: {}", by_probe(&self.returns_missed));
            if !self.returns_skipped.is_empty() {
                s.push_str(&format!(
                    " (return programs the kernel skipped: {})",
                    by_probe(&self.returns_skipped)
                ));
            }
            parts.push(s);
        }
        if !self.entries_skipped.is_empty() {
            parts.push(format!(
                "calls the kernel did not let the programs see: {}",
                by_probe(&self.entries_skipped)
            ));
        }
        parts.join("; ")
    }
}

/// A running trace.
pub struct Tracer {
    ebpf: Ebpf,
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    plan: Plan,
    facts: KernelFacts,
    offsets: Offsets,
    btf: Option<Btf>,
    tls_layout: TlsLayoutState,
    attached: Vec<Probe>,
    /// How each attached probe is attached, and its programs' links (for their
    /// statistics; detached all at once on drop, [`links`]).
    attached_via: Vec<(Probe, Via, Vec<LinkRef>)>,
    waiting: Vec<Probe>,
    lost: Vec<Lost>,
    skipped: Vec<(Probe, String)>,
    /// The kernel's BTF as aya reads it, for trampolines (None: the plan does not use
    /// them, or it could not be read).
    aya_btf: Option<aya::Btf>,
    log_task: Option<tokio::task::JoinHandle<()>>,
    /// The drop counters could not be read once (said then; see [`Tracer::drops`]).
    drops_unreadable: std::sync::atomic::AtomicBool,
    /// Aggregate mode: the grace period after the last generation switch, until over.
    grace: Option<aggregates::Grace>,
}

impl Tracer {
    /// Loads, configures and attaches. Needs a tokio runtime (the ring buffer is polled
    /// through the reactor).
    pub fn start(mut facts: KernelFacts, opts: &TraceOptions) -> Result<Tracer, TracerError> {
        if !facts.privileges.can_trace() {
            let why = facts
                .privileges
                .paranoid_hint()
                .filter(|_| facts.privileges.cap_bpf && facts.privileges.cap_perfmon)
                .map_or_else(
                    || kernel::NEED_PRIVILEGES.to_string(),
                    |h| format!("CAP_BPF and CAP_PERFMON are not enough here: {h}"),
                );
            return Err(TracerError::Privileges(why));
        }
        let mut plan = Plan::choose(&facts, opts.backend)?;
        // Tracepoints are attached by their tracefs ids: the tracepoint mode needs tracefs,
        // and so does the kprobe mode where `do_sendfile` is inlined (the sendfile64
        // tracepoints stand in). With the mount, the plan checks the tracepoints instead
        // of assuming them.
        if facts.tracefs.is_none() && plan.attaches_tracepoints() {
            match facts.mount_tracefs() {
                Ok(()) => plan = Plan::choose(&facts, opts.backend)?,
                Err(e) if plan.backend == Backend::Tracepoint => {
                    return Err(TracerError::NothingAttached(e));
                }
                // The kprobes still work; the tracepoints' attach fails and says so.
                Err(e) => log::warn!("{e}"),
            }
        }
        let mut phase = std::time::Instant::now();
        let mut took = |what: &str| {
            log::debug!("startup: {what} in {:?}", phase.elapsed());
            phase = std::time::Instant::now();
        };
        let btf = match Btf::from_sys_fs() {
            Ok(b) => Some(b),
            Err(e) => {
                log::warn!(
                    "no kernel BTF ({e}): MSG_* flags, payload heads and addresses will not be read"
                );
                None
            }
        };
        took("kernel BTF parsed");
        let offsets = offsets::read(btf.as_ref(), facts.tracefs.as_deref());
        took("offsets read");
        let mut ebpf = load_object(&config(&offsets, opts, plan.sendfile), opts)?;
        took("eBPF object loaded and verified");

        if !opts.pids.is_empty() {
            let mut pids: BpfHashMap<_, u32, u8> = ebpf
                .map_mut(maps::PIDS)
                .ok_or_else(|| TracerError::Load("map PIDS missing".into()))?
                .try_into()
                .map_err(|e| TracerError::Load(format!("map PIDS: {e}")))?;
            for pid in &opts.pids {
                pids.insert(pid, 1, 0)
                    .map_err(|e| TracerError::Load(format!("cannot fill the PID filter: {e}")))?;
            }
        }
        let log_task = spawn_logger(&mut ebpf);

        let ring_map = ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| TracerError::Load("map EVENTS missing".into()))?;
        let ring = RingBuf::try_from(ring_map)
            .map_err(|e| TracerError::Load(format!("map EVENTS: {e}")))?;
        // SAFETY: the RingBuf owns the map fd and neither closes nor replaces it while
        // the AsyncFd (which owns the RingBuf) lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| TracerError::Load(format!("cannot poll the ring buffer: {e}")))?;

        let mut t = Tracer {
            ebpf,
            ring: Some(ring),
            plan: plan.clone(),
            facts,
            offsets,
            btf,
            tls_layout: TlsLayoutState::Waiting,
            attached: Vec::new(),
            attached_via: Vec::new(),
            waiting: Vec::new(),
            lost: Vec::new(),
            skipped: Vec::new(),
            aya_btf: None,
            log_task,
            drops_unreadable: std::sync::atomic::AtomicBool::new(false),
            grace: None,
        };
        t.tls_layout = t.read_tls_layout();
        // Records are counted only with the tls module's layout known: derive from them
        // only then (a tls module loaded later keeps the pushes probed).
        if opts.derive_ciphertext && matches!(t.tls_layout, TlsLayoutState::Known(_)) {
            t.plan.derive_ciphertext();
        }
        let plan = t.plan.clone();
        took("maps set up");
        if plan.trampolines {
            t.aya_btf = aya::Btf::from_sys_fs()
                .map_err(|e| log::info!("no BPF trampolines: cannot read the kernel's BTF ({e})"))
                .ok();
            took("kernel BTF parsed again (aya, for trampolines)");
        }
        for (probe, decision) in &plan.decisions {
            match decision {
                Decision::Attach => match attach_probe(
                    &mut t.ebpf,
                    *probe,
                    t.aya_btf
                        .as_ref()
                        .zip(t.btf.as_ref())
                        .map(|(aya, ours)| TrampolineBtf { aya, ours }),
                ) {
                    Ok((via, links)) => {
                        t.attached.push(*probe);
                        t.attached_via.push((*probe, via, links));
                    }
                    Err(why) => t.lost.push(Lost { probe: *probe, why }),
                },
                Decision::WaitForTls => t.waiting.push(*probe),
                Decision::Skip(why) => t.skipped.push((*probe, why.clone())),
            }
        }
        took("probes attached");
        if t.attached.is_empty() && t.waiting.is_empty() {
            let why = t
                .lost
                .iter()
                .map(|l| format!("{}: {}", l.probe.name(), l.why))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(TracerError::NothingAttached(why));
        }
        Ok(t)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    pub fn facts(&self) -> &KernelFacts {
        &self.facts
    }
    pub fn attached(&self) -> &[Probe] {
        &self.attached
    }
    /// How a probe is attached (None: it is not).
    pub fn via(&self, probe: Probe) -> Option<Via> {
        self.attached_via
            .iter()
            .find(|(p, ..)| *p == probe)
            .map(|(_, v, _)| *v)
    }

    /// The kernel's counters of each attached probe's programs ([`progstats`]): (probe,
    /// entry program, return program); a one-program probe (a tracepoint that is not a
    /// syscall's enter/exit pair) has its program as the entry and no return.
    pub fn program_stats(
        &self,
    ) -> Vec<(Probe, progstats::ProgStats, Option<progstats::ProgStats>)> {
        let mut out = Vec::new();
        for (probe, _, links) in &self.attached_via {
            let stat = |link: &LinkRef| {
                self.ebpf
                    .program(&link.program)
                    .and_then(|p| p.fd().ok())
                    .and_then(|fd| progstats::read(fd.as_fd()))
                    .unwrap_or_default()
            };
            // Programs are attached return side first: [return, entry] (a tracepoint
            // probe has one program, counted as the entry).
            let (ret, entry) = match links.as_slice() {
                [r, e] => (Some(stat(r)), stat(e)),
                [e] => (None, stat(e)),
                _ => continue,
            };
            out.push((*probe, entry, ret));
        }
        out
    }
    pub fn waiting(&self) -> &[Probe] {
        &self.waiting
    }
    /// Probes the plan wanted but the kernel refused.
    pub fn lost(&self) -> &[Lost] {
        &self.lost
    }
    pub fn skipped(&self) -> &[(Probe, String)] {
        &self.skipped
    }

    /// Where each number comes from in this trace (see `plan::numbers`).
    pub fn numbers(&self) -> Vec<Number> {
        let mut plan = self.plan.clone();
        for l in &self.lost {
            if let Some((_, d)) = plan.decisions.iter_mut().find(|(p, _)| *p == l.probe) {
                *d = Decision::Skip(l.why.clone());
            }
        }
        plan::numbers(&plan, &self.offsets, &self.tls_layout)
    }

    /// Reads where kernel TLS keeps its state, once the module is live; fills the map the
    /// programs read it from.
    fn read_tls_layout(&mut self) -> TlsLayoutState {
        if !self.facts.tls.is_available() {
            return TlsLayoutState::Unknown(format!("kernel TLS {}", self.facts.tls.describe()));
        }
        if self.plan.backend == Backend::Tracepoint {
            return TlsLayoutState::Unknown("tracepoint mode".into());
        }
        if !kernel::TlsState::module_live() {
            return TlsLayoutState::Waiting;
        }
        let Some(btf) = &self.btf else {
            return TlsLayoutState::Unknown("the kernel has no BTF".into());
        };
        let (layout, where_) = match offsets::tls_layout(btf) {
            Ok(l) => l,
            Err(why) => return TlsLayoutState::Unknown(why),
        };
        let written = self
            .ebpf
            .map_mut(maps::TLS_LAYOUT)
            .ok_or_else(|| "map TLS_LAYOUT missing".to_string())
            .and_then(|m| {
                Array::<_, PodTlsLayout>::try_from(m).map_err(|e| format!("map TLS_LAYOUT: {e}"))
            })
            .and_then(|mut a| {
                a.set(0, PodTlsLayout(layout), 0)
                    .map_err(|e| format!("writing TLS_LAYOUT: {e}"))
            });
        match written {
            Ok(()) => TlsLayoutState::Known(where_),
            Err(why) => TlsLayoutState::Unknown(why),
        }
    }

    /// Called periodically: when the tls module has appeared, attach its probes and read
    /// where it keeps a socket's state.
    pub fn poll_tls_module(&mut self) -> Vec<Notice> {
        let layout_pending = self.tls_layout == TlsLayoutState::Waiting;
        if (self.waiting.is_empty() && !layout_pending) || !kernel::TlsState::module_live() {
            return Vec::new();
        }
        self.facts.refresh_tls();
        let mut notices = Vec::new();
        if layout_pending {
            self.tls_layout = self.read_tls_layout();
            match &self.tls_layout {
                TlsLayoutState::Known(_) => notices.push(Notice::TlsLayout(Ok(()))),
                TlsLayoutState::Unknown(why) => notices.push(Notice::TlsLayout(Err(why.clone()))),
                TlsLayoutState::Waiting => {}
            }
        }
        for probe in std::mem::take(&mut self.waiting) {
            let Hook::Kfunc(func) = probe.spec().hook else {
                continue;
            };
            if !self.facts.has_symbol(func) {
                // The module is live, so a missing function is one this build lacks.
                let why = "not in this kernel's tls module".to_string();
                self.skipped.push((probe, why));
                continue;
            }
            let tramp = self.aya_btf.as_ref().zip(self.btf.as_ref());
            match attach_probe(
                &mut self.ebpf,
                probe,
                tramp.map(|(aya, ours)| TrampolineBtf { aya, ours }),
            ) {
                Ok((via, links)) => {
                    self.attached.push(probe);
                    self.attached_via.push((probe, via, links));
                    notices.push(Notice::Attached(probe));
                }
                Err(why) => {
                    let l = Lost { probe, why };
                    notices.push(Notice::Lost(l.clone()));
                    self.lost.push(l);
                }
            }
        }
        notices
    }

    /// The ring buffer, for the session (taken once).
    pub(crate) fn take_ring(&mut self) -> Option<AsyncFd<RingBuf<MapData>>> {
        self.ring.take()
    }

    /// Events lost in the kernel so far (all CPUs), by cause. If the counters cannot be
    /// read, that is said once (a warning, shown by default) and zeros are returned:
    /// never a silent zero.
    pub fn losses(&self) -> Losses {
        match self.read_losses() {
            Ok(l) => l,
            Err(why) => {
                if !self
                    .drops_unreadable
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    log::warn!(
                        "cannot read the drop counters ({why}): lost events are not counted"
                    );
                }
                Losses::default()
            }
        }
    }

    fn read_losses(&self) -> Result<Losses, String> {
        let map = self
            .ebpf
            .map(maps::STATS)
            .ok_or_else(|| format!("no {} map", maps::STATS))?;
        let arr = PerCpuArray::<_, [u64; stat::COUNT as usize]>::try_from(map)
            .map_err(|e| e.to_string())?;
        let per_cpu = {
            let _rt = unpreempted::Unpreempted::new();
            arr.get(&0, 0).map_err(|e| e.to_string())?
        };
        let sum = |i: u32| -> u64 { per_cpu.iter().map(|c| c[i as usize]).sum() };
        let mut l = Losses {
            ring_full: sum(stat::RINGBUF_FULL),
            in_flight_full: sum(stat::ACTIVE_FULL),
            aggregates_full: sum(stat::AGG_FULL),
            ..Losses::default()
        };
        for p in Probe::ALL {
            let n = sum(stat::RETURN_MISSED + p as u32);
            if n > 0 {
                l.returns_missed.push((p, n));
            }
        }
        for (p, entry, ret) in self.program_stats() {
            if let Some(n) = entry.recursion_misses.filter(|n| *n > 0) {
                l.entries_skipped.push((p, n));
            }
            if let Some(n) = ret.and_then(|r| r.recursion_misses).filter(|n| *n > 0) {
                l.returns_skipped.push((p, n));
            }
        }
        Ok(l)
    }

    /// The name of a process one of whose other threads was traced (None if the programs
    /// did not see one, or it was evicted).
    pub fn process_name(&self, pid: u32) -> Option<Comm> {
        let map = self.ebpf.map(maps::PROCS)?;
        let m: BpfHashMap<_, u32, [u8; COMM_LEN]> = BpfHashMap::try_from(map).ok()?;
        let _rt = unpreempted::Unpreempted::new();
        m.get(&pid, 0).ok().map(|raw| Comm::from_kernel(&raw))
    }

    /// Addresses and owner of a socket seen by the probes (None if never seen or evicted).
    pub fn endpoints(&self, sock: u64) -> Option<(Endpoints, u32)> {
        let map = self.ebpf.map(maps::SOCKINFO)?;
        let m: BpfHashMap<_, u64, PodSockInfo> = BpfHashMap::try_from(map).ok()?;
        let _rt = unpreempted::Unpreempted::new();
        m.get(&sock, 0)
            .ok()
            .map(|p| (Endpoints::from(&p.0), p.0.owner))
    }
}

/// aya-log: the programs' debug records (`-vv`), read through the reactor.
fn spawn_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    match aya_log::EbpfLogger::init(ebpf) {
        // SAFETY: the logger owns its ring-buffer map fd and keeps it open, unchanged,
        // for as long as the AsyncFd (which owns the logger) lives.
        Ok(logger) => {
            match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            {
                Ok(mut fd) => Some(tokio::spawn(async move {
                    while let Ok(mut guard) = fd.readable_mut().await {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                })),
                Err(e) => {
                    log::debug!("aya-log not polled: {e}");
                    None
                }
            }
        }
        Err(e) => {
            log::debug!("aya-log not available: {e}");
            None
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(t) = self.log_task.take() {
            t.abort();
        }
        // Every link at once (links.rs says why), then `ebpf` drops: aya unloads the
        // programs and closes the maps.
        let all = std::mem::take(&mut self.attached_via)
            .into_iter()
            .flat_map(|(_, _, l)| l)
            .collect();
        links::detach_all(&mut self.ebpf, all);
    }
}

/// Result of loading every program of the object into the kernel (no attach): what
/// `doctor` reports as "the verifier accepts our programs here".
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoadCheck {
    pub verified: Vec<String>,
    pub rejected: Vec<(String, String)>,
    /// Whether an fentry program could be loaded (None: not tried).
    pub fentry: Option<Result<(), String>>,
    /// Set when the object itself could not be loaded.
    pub object_error: Option<String>,
    /// Struct offsets and kernel TLS layout as the tracer would use them.
    #[serde(skip)]
    pub offsets: Option<Offsets>,
    #[serde(skip)]
    pub tls_layout: Option<TlsLayoutState>,
}

/// Loads every kprobe and tracepoint program (verifier only) and tries fentry.
pub fn load_check(facts: &KernelFacts) -> LoadCheck {
    let mut out = LoadCheck::default();
    let btf = Btf::from_sys_fs().ok();
    let offsets = offsets::read(btf.as_ref(), facts.tracefs.as_deref());
    out.offsets = Some(offsets);
    out.tls_layout = Some(
        match (
            &btf,
            facts.tls.is_available(),
            kernel::TlsState::module_live(),
        ) {
            (_, false, _) => {
                TlsLayoutState::Unknown(format!("kernel TLS {}", facts.tls.describe()))
            }
            (_, true, false) => TlsLayoutState::Waiting,
            (None, true, true) => TlsLayoutState::Unknown("the kernel has no BTF".into()),
            (Some(b), true, true) => match offsets::tls_layout(b) {
                Ok((_, where_)) => TlsLayoutState::Known(where_),
                Err(why) => TlsLayoutState::Unknown(why),
            },
        },
    );
    let cfg = config(&offsets, &TraceOptions::default(), Probe::DoSendfile);
    let mut ebpf = match load_object(&cfg, &TraceOptions::default()) {
        Ok(e) => e,
        Err(e) => {
            out.object_error = Some(e.to_string());
            return out;
        }
    };
    let aya_btf = aya::Btf::from_sys_fs().ok();
    // fentry_check first: the trampoline pairs are verified only where the kernel takes
    // trampolines at all (elsewhere they are never used, so never a rejection).
    if let Some(aya::programs::Program::FEntry(p)) = ebpf.program_mut("fentry_check") {
        out.fentry = Some(match &aya_btf {
            Some(btf) => p.load("do_sendfile", btf).map_err(|e| explain(&e)),
            None => Err("no kernel BTF".to_string()),
        });
    }
    let trampolines = matches!(out.fentry, Some(Ok(())));
    let our_btf = btf.as_ref();
    let mut names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    names.sort();
    for name in names {
        // A trampoline program is named after its function: `<function>_fentry`.
        let function = name
            .strip_suffix("_fentry")
            .or_else(|| name.strip_suffix("_fexit"))
            .filter(|f| our_btf.is_some_and(|b| b.function_params(f).is_some()));
        let Some(prog) = ebpf.program_mut(&name) else {
            continue;
        };
        let res = match (prog, &aya_btf, function) {
            (aya::programs::Program::KProbe(p), ..) => p.load().map_err(|e| explain(&e)),
            (aya::programs::Program::TracePoint(p), ..) => p.load().map_err(|e| explain(&e)),
            (aya::programs::Program::FEntry(p), Some(btf), Some(f)) if trampolines => {
                p.load(f, btf).map_err(|e| explain(&e))
            }
            (aya::programs::Program::FExit(p), Some(btf), Some(f)) if trampolines => {
                p.load(f, btf).map_err(|e| explain(&e))
            }
            _ => continue,
        };
        match res {
            Ok(()) => out.verified.push(name),
            Err(why) => out.rejected.push((name, why)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The object defines exactly the programs the probe table names, kprobe and
    /// trampoline pairs (plus doctor's fentry check): a probe renamed on one side only fails here, not at attach time.
    #[test]
    fn the_object_has_the_programs_the_table_names() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("parse the eBPF object");
        let have: BTreeSet<String> = obj.programs.keys().cloned().collect();
        let mut want: BTreeSet<String> = Probe::ALL
            .iter()
            .flat_map(|p| {
                programs(*p)
                    .into_iter()
                    .chain(trampoline_programs(*p).unwrap_or_default())
                    .map(|(n, _)| n)
            })
            .collect();
        want.insert("fentry_check".into());
        assert_eq!(have, want);
    }

    #[test]
    fn config_carries_filters_and_offsets() {
        let opts = TraceOptions {
            pids: vec![7],
            comm: Some("a-very-long-command-name".into()),
            wakeup_bytes: 4096,
            ..TraceOptions::default()
        };
        let off = Offsets {
            msghdr_flags: 72,
            ..Offsets::UNKNOWN
        };
        let c = config(&off, &opts, Probe::Sendfile64);
        assert_eq!((c.filter_pids, c.filter_comm, c.wakeup_bytes), (1, 1, 4096));
        assert_eq!(&c.comm[..15], b"a-very-long-com");
        assert_eq!(c.comm[15], 0, "NUL-terminated like the kernel's");
        assert_eq!(c.off.msghdr_flags, 72);
        assert_eq!(c.sendfile_probe, Probe::Sendfile64 as u8);
    }

    #[test]
    fn the_verifier_says_why() {
        let log = "0: (bf) r6 = r1\n17: (79) r1 = *(u64 *)(r10 -200)\ninvalid read from stack R10 off=-200 size=8\nprocessed 2996 insns (limit 1000000) max_states_per_insn 4\n";
        assert_eq!(
            verifier_reason(log),
            "invalid read from stack R10 off=-200 size=8"
        );
        assert_eq!(verifier_reason(""), "");
    }

    #[test]
    fn lost_probes_say_what_is_lost() {
        let l = Lost {
            probe: Probe::TcpSendmsg,
            why: "the kernel's verifier rejected the program".into(),
        };
        let text = l.to_string();
        assert!(
            text.starts_with("tcp_sendmsg lost: the kernel's verifier"),
            "{text}"
        );
        assert!(text.contains("plain and user-space TLS traffic"), "{text}");
    }
}
