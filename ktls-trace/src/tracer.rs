//! The probe side at run time: loads the embedded eBPF object with this kernel's offsets,
//! attaches what the [`Plan`] says, picks up the tls module when it appears, and hands
//! out decoded events from the ring buffer. Dropping the [`Tracer`] detaches everything
//! (aya owns the links; the kernel also detaches them if the process dies).

use std::{
    io,
    os::fd::AsRawFd,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{KProbe, ProgramError, TracePoint},
};
use ktls_trace_common::{COMM_LEN, OFF_UNKNOWN, Probe, SockInfo, names, stat};
use tokio::io::unix::AsyncFd;

use crate::{
    btf::Btf,
    event::{DecodeError, TraceEvent, decode},
    kernel::{self, KernelFacts},
    plan::{Attach, Backend, BackendChoice, Decision, Plan, PlanError, Spec},
};

/// The eBPF object, built by build.rs through aya-build.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ktls-trace-ebpf"));

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error("{}", kernel::NEED_PRIVILEGES)]
    Privileges,
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
    #[error("reading the ring buffer failed: {0}")]
    Ring(#[from] io::Error),
    #[error("--comm {0:?} is empty")]
    BadComm(String),
}

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    pub backend: BackendChoice,
    /// Process ids (tgids); empty = all processes.
    pub pids: Vec<u32>,
    /// Only tasks with this command name.
    pub comm: Option<String>,
    /// Emit aya-log debug records from the programs.
    pub debug: bool,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: Option<u32>,
    /// Wake the reader only when this many bytes wait; the reader must then also drain
    /// on a timer ([`Tracer::drain`], at least every [`DRAIN_EVERY`]). 0: wake per event.
    pub wakeup_bytes: u64,
}

/// Default [`TraceOptions::wakeup_bytes`]: about 3,000 events, a small part of the
/// default 8 MiB ring, so a burst wakes the reader long before the ring fills.
pub const WAKEUP_BYTES: u64 = 256 << 10;

/// How often a reader that batches wake-ups drains the ring buffer on its own.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A change while tracing that the user should hear about (one line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Attached(Probe),
    Skipped(Probe, String),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Attached(p) => write!(f, "attached {}", p.name()),
            Notice::Skipped(p, why) => write!(f, "skipped {}: {why}", p.name()),
        }
    }
}

/// Turns an aya error into words a user can act on (never a raw errno).
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
            if verifier_log.to_string().trim().is_empty() {
                // No verifier output: the kernel refused before verifying (e.g. fentry
                // without the ftrace support it needs).
                format!("the kernel refused to load it ({})", errno_words(io_error))
            } else {
                format!(
                    "the kernel's verifier rejected the program ({}; -vv shows its log)",
                    errno_words(io_error)
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

/// Offsets and tracepoint fields the programs need, read from this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub msghdr_flags: u32,
    pub socket_sk: u32,
    pub ssl_sk: u32,
    pub ssl_ret: u32,
    pub ssl_proto: u32,
    pub msghdr_iter: u32,
    pub iter_type: u32,
    pub iter_ubuf: u32,
    pub iter_iov: u32,
    pub iter_ubuf_val: u32,
    pub iter_iovec_val: u32,
    /// `struct sock_common` members for the socket address map.
    pub skc: [u32; 7],
}

/// Order of [`Offsets::skc`], matching the globals' names.
const SKC_MEMBERS: [(&str, &str); 7] = [
    ("skc_family", names::SKC_FAMILY_OFF),
    ("skc_num", names::SKC_NUM_OFF),
    ("skc_dport", names::SKC_DPORT_OFF),
    ("skc_daddr", names::SKC_DADDR_OFF),
    ("skc_rcv_saddr", names::SKC_RCV_SADDR_OFF),
    ("skc_v6_daddr", names::SKC_V6_DADDR_OFF),
    ("skc_v6_rcv_saddr", names::SKC_V6_RCV_SADDR_OFF),
];

impl Offsets {
    /// Reads BTF and tracepoint formats. Unknown values stay `OFF_UNKNOWN`: the programs
    /// then leave the field out rather than read the wrong bytes.
    pub fn read(facts: &KernelFacts) -> Offsets {
        let mut o = Offsets {
            msghdr_flags: OFF_UNKNOWN,
            socket_sk: OFF_UNKNOWN,
            ssl_sk: OFF_UNKNOWN,
            ssl_ret: OFF_UNKNOWN,
            ssl_proto: OFF_UNKNOWN,
            msghdr_iter: OFF_UNKNOWN,
            iter_type: OFF_UNKNOWN,
            iter_ubuf: OFF_UNKNOWN,
            iter_iov: OFF_UNKNOWN,
            iter_ubuf_val: OFF_UNKNOWN,
            iter_iovec_val: OFF_UNKNOWN,
            skc: [OFF_UNKNOWN; 7],
        };
        match Btf::from_sys_fs() {
            Ok(btf) => {
                o.msghdr_flags = btf
                    .member_offset("msghdr", "msg_flags")
                    .unwrap_or(OFF_UNKNOWN);
                o.socket_sk = btf.member_offset("socket", "sk").unwrap_or(OFF_UNKNOWN);
                o.msghdr_iter = btf
                    .member_offset("msghdr", "msg_iter")
                    .unwrap_or(OFF_UNKNOWN);
                o.iter_type = btf
                    .member_offset("iov_iter", "iter_type")
                    .unwrap_or(OFF_UNKNOWN);
                o.iter_ubuf = btf.member_offset("iov_iter", "ubuf").unwrap_or(OFF_UNKNOWN);
                // Renamed from `iov` to `__iov` in 6.4 (commit de4f5fed3f23).
                o.iter_iov = btf
                    .member_offset("iov_iter", "__iov")
                    .or_else(|_| btf.member_offset("iov_iter", "iov"))
                    .unwrap_or(OFF_UNKNOWN);
                let val = |n: &str| {
                    btf.enum_value(n)
                        .ok()
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(OFF_UNKNOWN)
                };
                for (slot, (member, _)) in o.skc.iter_mut().zip(SKC_MEMBERS) {
                    *slot = btf
                        .member_offset("sock_common", member)
                        .unwrap_or(OFF_UNKNOWN);
                }
                o.iter_ubuf_val = val("ITER_UBUF");
                o.iter_iovec_val = val("ITER_IOVEC");
            }
            Err(e) => log::warn!("no kernel BTF ({e}): MSG_* flags will not be shown"),
        }
        if let Some(tfs) = &facts.tracefs
            && let Some(f) = kernel::tracepoint_fields(tfs, "sock", "sock_send_length")
        {
            let get = |n: &str| f.get(n).map(|(off, _)| *off).unwrap_or(OFF_UNKNOWN);
            o.ssl_sk = get("sk");
            o.ssl_ret = get("ret");
            o.ssl_proto = get("protocol");
        }
        o
    }
}

/// Builds an `EbpfLoader` with this run's configuration and loads the object (maps are
/// created; no program is loaded into the kernel yet).
fn load_object(offsets: &Offsets, opts: &TraceOptions) -> Result<Ebpf, TracerError> {
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
    let filter_pids = u8::from(!opts.pids.is_empty());
    let filter_comm = u8::from(opts.comm.is_some());
    let debug = u8::from(opts.debug);
    let mut loader = EbpfLoader::new();
    loader
        .override_global(names::FILTER_PIDS, &filter_pids, true)
        .override_global(names::FILTER_COMM, &filter_comm, true)
        .override_global(names::COMM, &comm, true)
        .override_global(names::MSGHDR_FLAGS_OFF, &offsets.msghdr_flags, true)
        .override_global(names::SOCKET_SK_OFF, &offsets.socket_sk, true)
        .override_global(names::SOCK_KEY, &key, true)
        .override_global(names::DEBUG, &debug, true)
        .override_global(names::WAKEUP_BYTES, &opts.wakeup_bytes, true)
        .override_global(names::TP_SSL_SK_OFF, &offsets.ssl_sk, true)
        .override_global(names::TP_SSL_RET_OFF, &offsets.ssl_ret, true)
        .override_global(names::TP_SSL_PROTO_OFF, &offsets.ssl_proto, true)
        .override_global(names::MSGHDR_ITER_OFF, &offsets.msghdr_iter, true)
        .override_global(names::ITER_TYPE_OFF, &offsets.iter_type, true)
        .override_global(names::ITER_UBUF_OFF, &offsets.iter_ubuf, true)
        .override_global(names::ITER_IOV_OFF, &offsets.iter_iov, true)
        .override_global(names::ITER_UBUF_VAL, &offsets.iter_ubuf_val, true)
        .override_global(names::ITER_IOVEC_VAL, &offsets.iter_iovec_val, true);
    for (off, (_, global)) in offsets.skc.iter().zip(SKC_MEMBERS) {
        loader.override_global(global, off, true);
    }
    if let Some(bytes) = opts.ring_bytes {
        loader.map_max_entries(names::EVENTS, bytes);
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

/// The program `name` of the object, as type `P` (KProbe, TracePoint).
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .map_err(|e: ProgramError| explain(&e))
}

/// One load or attach step: the full error goes to the debug log, words to the user.
fn step<T>(what: std::fmt::Arguments<'_>, r: Result<T, ProgramError>) -> Result<T, String> {
    r.map_err(|e| {
        log::debug!("{what}: {e:?}");
        explain(&e)
    })
}

/// Loads (verifies) and attaches the programs of one spec.
fn attach_spec(ebpf: &mut Ebpf, spec: &Spec) -> Result<(), String> {
    // Return side first: a return without a recorded entry is simply ignored, while an
    // entry whose return probe is not there yet would linger in ACTIVE.
    match spec.attach {
        Attach::Kfunc { func, entry, ret } => {
            for prog in [ret, entry] {
                let p: &mut KProbe = program(ebpf, prog)?;
                step(format_args!("loading {prog}"), p.load())?;
                step(
                    format_args!("attaching {prog} to {func}"),
                    p.attach(func, 0),
                )?;
            }
        }
        Attach::Tracepoint {
            category,
            enter,
            exit,
        } => {
            for (prog, tp) in exit.into_iter().chain([enter]) {
                let p: &mut TracePoint = program(ebpf, prog)?;
                step(format_args!("loading {prog}"), p.load())?;
                step(
                    format_args!("attaching {prog} to {category}:{tp}"),
                    p.attach(category, tp),
                )?;
            }
        }
    }
    Ok(())
}

/// A running trace.
pub struct Tracer {
    ebpf: Ebpf,
    ring: AsyncFd<RingBuf<MapData>>,
    plan: Plan,
    facts: KernelFacts,
    attached: Vec<Probe>,
    waiting: Vec<Spec>,
    skipped: Vec<(Probe, String)>,
    log_task: Option<tokio::task::JoinHandle<()>>,
}

impl Tracer {
    /// Loads, configures and attaches. Needs a tokio runtime (the ring buffer is polled
    /// through the reactor).
    pub fn start(mut facts: KernelFacts, opts: &TraceOptions) -> Result<Tracer, TracerError> {
        if !facts.privileges.can_trace() {
            return Err(TracerError::Privileges);
        }
        if let Some(c) = &opts.comm
            && c.is_empty()
        {
            return Err(TracerError::BadComm(c.clone()));
        }
        let plan = Plan::choose(&facts, opts.backend)?;
        if plan.backend == Backend::Tracepoint && facts.tracefs.is_none() {
            match kernel::ensure_tracefs() {
                Ok(p) => facts.tracefs = Some(p),
                Err(e) => return Err(TracerError::NothingAttached(e)),
            }
        }
        let offsets = Offsets::read(&facts);
        let mut ebpf = load_object(&offsets, opts)?;

        if !opts.pids.is_empty() {
            let mut pids: BpfHashMap<_, u32, u8> = ebpf
                .map_mut(names::PIDS)
                .ok_or_else(|| TracerError::Load("map PIDS missing".into()))?
                .try_into()
                .map_err(|e| TracerError::Load(format!("map PIDS: {e}")))?;
            for pid in &opts.pids {
                pids.insert(pid, 1, 0)
                    .map_err(|e| TracerError::Load(format!("cannot fill the PID filter: {e}")))?;
            }
        }

        let log_task = match aya_log::EbpfLogger::init(&mut ebpf) {
            // SAFETY: the logger owns its ring-buffer map fd and keeps it open, unchanged,
            // for as long as the AsyncFd (which owns the logger) lives.
            Ok(logger) => match unsafe {
                AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
            } {
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
            },
            Err(e) => {
                log::debug!("aya-log not available: {e}");
                None
            }
        };

        let ring_map = ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| TracerError::Load("map EVENTS missing".into()))?;
        let ring = RingBuf::try_from(ring_map)
            .map_err(|e| TracerError::Load(format!("map EVENTS: {e}")))?;
        // SAFETY: the RingBuf owns the map fd and neither closes nor replaces it while
        // the AsyncFd (which owns the RingBuf) lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| TracerError::Load(format!("cannot poll the ring buffer: {e}")))?;

        let mut t = Tracer {
            ebpf,
            ring,
            plan: plan.clone(),
            facts,
            attached: Vec::new(),
            waiting: Vec::new(),
            skipped: Vec::new(),
            log_task,
        };
        for (spec, decision) in &plan.decisions {
            match decision {
                Decision::Attach => match attach_spec(&mut t.ebpf, spec) {
                    Ok(()) => t.attached.push(spec.probe),
                    Err(why) => t.skipped.push((spec.probe, why)),
                },
                Decision::WaitForTls => t.waiting.push(*spec),
                Decision::Skip(why) => t.skipped.push((spec.probe, why.clone())),
            }
        }
        if t.attached.is_empty() && t.waiting.is_empty() {
            let why = t
                .skipped
                .iter()
                .map(|(p, w)| format!("{}: {w}", p.name()))
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
    pub fn waiting(&self) -> impl Iterator<Item = Probe> + '_ {
        self.waiting.iter().map(|s| s.probe)
    }
    pub fn skipped(&self) -> &[(Probe, String)] {
        &self.skipped
    }

    /// Called periodically: when the tls module has appeared, attach its probes.
    pub fn check_tls_module(&mut self) -> Vec<Notice> {
        // Attach only once the module is live: /sys/module/tls appears while it is still
        // initialising (MODULE_STATE_COMING), before its symbols are all final in kallsyms.
        if self.waiting.is_empty()
            || !std::path::Path::new("/sys/module/tls").exists()
            || !kernel_module_live()
        {
            return Vec::new();
        }
        self.facts.refresh_tls();
        let mut notices = Vec::new();
        let waiting = std::mem::take(&mut self.waiting);
        for spec in waiting {
            let Attach::Kfunc { func, .. } = spec.attach else {
                continue;
            };
            if !self.facts.has_symbol(func) {
                // The module is live, so a missing function is one this build lacks.
                if self.facts.tls.is_active() {
                    let why = "not in this kernel's tls module".to_string();
                    notices.push(Notice::Skipped(spec.probe, why.clone()));
                    self.skipped.push((spec.probe, why));
                } else {
                    self.waiting.push(spec);
                }
                continue;
            }
            match attach_spec(&mut self.ebpf, &spec) {
                Ok(()) => {
                    self.attached.push(spec.probe);
                    notices.push(Notice::Attached(spec.probe));
                }
                Err(why) => {
                    notices.push(Notice::Skipped(spec.probe, why.clone()));
                    self.skipped.push((spec.probe, why));
                }
            }
        }
        notices
    }

    /// Waits until events are ready, then decodes all of them into `out`.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Result<TraceEvent, DecodeError>>,
    ) -> Result<(), TracerError> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            out.push(decode(&item));
        }
        guard.clear_ready();
        Ok(())
    }

    /// Decodes what is in the ring buffer now, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Result<TraceEvent, DecodeError>>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            out.push(decode(&item));
        }
    }

    /// Events lost in the kernel so far (all CPUs).
    pub fn drops(&self) -> u64 {
        let Some(map) = self.ebpf.map(names::STATS) else {
            return 0;
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        [stat::RINGBUF_FULL, stat::ACTIVE_FULL]
            .iter()
            .filter_map(|i| arr.get(i, 0).ok())
            .map(|v| v.iter().sum::<u64>())
            .sum()
    }

    /// Addresses and owner of a socket seen by the probes (None if never seen or evicted).
    pub fn sock_info(&self, sock: u64) -> Option<SockAddr> {
        let map = self.ebpf.map(names::SOCKINFO)?;
        let m: BpfHashMap<_, u64, PodSockInfo> = BpfHashMap::try_from(map).ok()?;
        m.get(&sock, 0).ok().map(|p| SockAddr::from(&p.0))
    }

    /// The ring buffer's fd (for diagnostics).
    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

/// The tls module has finished initialising (built in: no initstate file, always live).
fn kernel_module_live() -> bool {
    match std::fs::read_to_string("/sys/module/tls/initstate") {
        Ok(s) => s.trim() == "live",
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(t) = self.log_task.take() {
            t.abort();
        }
        // `ebpf` drops next: aya detaches every link and unloads the programs.
    }
}

/// `SockInfo` as an aya map value.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodSockInfo(SockInfo);
// SAFETY: SockInfo is repr(C) plain integers and byte arrays without padding (size
// asserted in ktls-trace-common), so any bytes are a valid value.
unsafe impl aya::Pod for PodSockInfo {}

/// A socket's endpoints, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockAddr {
    pub local: Option<std::net::SocketAddr>,
    pub peer: Option<std::net::SocketAddr>,
    /// The process that first used the socket in a traced call.
    pub owner: u32,
}

impl From<&SockInfo> for SockAddr {
    fn from(i: &SockInfo) -> SockAddr {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
        let ip = |a: &[u8; 16]| -> Option<IpAddr> {
            match i.family {
                2 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
                10 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
                _ => None,
            }
        };
        SockAddr {
            local: ip(&i.saddr).map(|a| SocketAddr::new(a, i.sport)),
            peer: ip(&i.daddr).map(|a| SocketAddr::new(a, u16::from_be(i.dport_be))),
            owner: i.owner,
        }
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
}

/// Loads every kprobe and tracepoint program (verifier only) and tries fentry.
pub fn load_check(facts: &KernelFacts) -> LoadCheck {
    let mut out = LoadCheck::default();
    let offsets = Offsets::read(facts);
    let mut ebpf = match load_object(&offsets, &TraceOptions::default()) {
        Ok(e) => e,
        Err(e) => {
            out.object_error = Some(e.to_string());
            return out;
        }
    };
    let btf = aya::Btf::from_sys_fs().ok();
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    let mut sorted = names;
    sorted.sort();
    for name in sorted {
        let Some(prog) = ebpf.program_mut(&name) else {
            continue;
        };
        let res = match prog {
            aya::programs::Program::KProbe(p) => p.load().map_err(|e| explain(&e)),
            aya::programs::Program::TracePoint(p) => p.load().map_err(|e| explain(&e)),
            aya::programs::Program::FEntry(p) => {
                out.fentry = Some(match &btf {
                    Some(btf) => p.load("do_sendfile", btf).map_err(|e| explain(&e)),
                    None => Err("no kernel BTF".to_string()),
                });
                continue;
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
    use super::*;

    #[test]
    fn sock_addr_decodes_ipv4_and_ipv6() {
        let mut i = SockInfo {
            family: 2,
            sport: 8443,
            dport_be: 54321u16.to_be(),
            owner: 7,
            ..Default::default()
        };
        i.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        i.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let a = SockAddr::from(&i);
        assert_eq!(a.local, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(a.peer, Some("10.1.2.3:54321".parse().unwrap()));
        assert_eq!(a.owner, 7);

        i.family = 10;
        i.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        assert_eq!(
            SockAddr::from(&i).peer,
            Some("[::1]:54321".parse().unwrap())
        );
        i.family = 1; // AF_UNIX: no addresses
        assert_eq!(SockAddr::from(&i).peer, None);
    }

    #[test]
    fn offsets_come_from_this_kernels_btf() {
        let facts = KernelFacts::probe();
        let o = Offsets::read(&facts);
        assert_ne!(o.msghdr_flags, OFF_UNKNOWN);
        assert_ne!(o.socket_sk, OFF_UNKNOWN);
        assert_ne!(o.msghdr_iter, OFF_UNKNOWN);
        assert_ne!(o.iter_ubuf_val, o.iter_iovec_val);
        for (v, (name, _)) in o.skc.iter().zip(SKC_MEMBERS) {
            assert_ne!(*v, OFF_UNKNOWN, "sock_common.{name}");
        }
        // skc_daddr and skc_rcv_saddr are adjacent __be32s; skc_dport and skc_num too.
        assert_eq!(o.skc[4], o.skc[3] + 4);
        assert_eq!(o.skc[1], o.skc[2] + 2);
    }
}
