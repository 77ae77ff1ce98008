//! eBPF side of ktls-trace: kprobes/kretprobes on the kernel TLS transmit path and, for
//! kernels without kprobes (or without a `do_sendfile` symbol), tracepoints. Every program
//! feeds the one `EVENTS` ring buffer with fixed-size [`Event`] records; which programs
//! exist is declared in `ktls_trace_common::probes` (a userspace test checks the two agree).
//!
//! How a call becomes an event:
//! 1. the entry probe filters (PID / thread or process name / socket of a traced process),
//!    stores the arguments in `ACTIVE` keyed by (thread, probe), and records which probed
//!    call of the same thread it runs inside (`parent`, `root`): that is how a TCP push
//!    inside a kTLS send inside a sendfile is linked to both. A kTLS send also records the
//!    socket's TLS version, cipher and transmit record sequence number;
//! 2. the return probe takes the entry back out, adds return value and latency (and, for a
//!    kTLS send, how far the record sequence number moved: the records it closed) and
//!    reserves one ring-buffer record; a full ring buffer is counted in `STATS`, never
//!    silently lost.
//!
//! Struct fields are read at offsets computed by userspace from the running kernel's BTF
//! and handed over in [`Config`] (and [`TlsLayout`] once the tls module is loaded): Rust
//! eBPF gets no CO-RE relocations (aya-rs/aya#349), and the structs differ between kernels.
//!
//! Every value read from the kernel lands in a zero-initialised local first: 5.10's
//! verifier rejects a program that may read a stack slot no path wrote (a `None` branch of
//! an `Option<[u8; N]>` the compiler still copies), newer verifiers are more lenient.
// On the BPF target this is a no_std, no_main object; built for the host (as part of
// `cargo build/clippy --workspace`) it is an ordinary binary that does nothing, so the
// whole workspace builds and lints with one command.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::{fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use aya_log_ebpf::debug;
use ktls_trace_common::{
    Active, AggKey, AggVal, COMM_LEN, Config, Event, HEAD_LEN, LAT_BUCKETS, LatHist, LatKey,
    MAX_RECORDS_PER_CALL, OFF_UNKNOWN, Probe, SockInfo, TlsLayout, active_key, facts, has,
    lat_bucket, sock_id, stat,
};

// ---- configuration, written by userspace at load time (EbpfLoader::override_global) ----

/// The one load-time global. `MaybeUninit` keeps the compiler from assuming the default
/// value (as aya's `Global` does); fields are read with volatile loads ([`setting!`]).
#[repr(transparent)]
struct Settings(MaybeUninit<Config>);

// SAFETY: the programs only read CONFIG; it lives in read-only data that the loader fills
// before the programs run and the kernel freezes.
unsafe impl Sync for Settings {}

// SAFETY: an unmangled name could clash with another symbol of the same name; CONFIG and
// LICENSE are unique in this object, which links nothing else with C names, and CONFIG is
// exactly the name userspace looks up (`ktls_trace_common::CONFIG_SYMBOL`).
#[unsafe(no_mangle)]
static CONFIG: Settings = Settings(MaybeUninit::new(Config::DEFAULT));

/// One field of [`CONFIG`], e.g. `setting!(off.msghdr_flags)`.
macro_rules! setting {
    ($($field:ident).+) => {
        // SAFETY: CONFIG is always initialised (the default above, or the loader's bytes of
        // the same size); the volatile read only stops constant folding of the default.
        unsafe { core::ptr::read_volatile(&raw const (*CONFIG.0.as_ptr()).$($field).+) }
    };
}

// ---- maps ----

/// The one event stream to userspace. Userspace may resize it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Calls in flight, keyed by `active_key(tid, probe)`. LRU so that a return that never
/// comes (a kretprobe missed under load) cannot fill it for good.
#[map]
static ACTIVE: LruHashMap<u64, Active> = LruHashMap::with_max_entries(16384, 0);

/// Traced process ids (tgid), when `filter_pids` is set.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Sockets (raw `struct sock` address -> owner tgid) seen in a traced process: kTLS may
/// push a socket's records later from a kworker, which must still count for it.
#[map]
static SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Addresses of the sockets seen, by socket id (read by userspace for the connection view).
#[map]
static SOCKINFO: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(16384, 0);

/// Process names (the thread-group leader's comm) of processes whose other threads sent:
/// an event carries its thread's name, and the process may be gone before userspace can
/// look its name up in /proc.
#[map]
static PROCS: LruHashMap<u32, [u8; COMM_LEN]> = LruHashMap::with_max_entries(16384, 0);

/// Where kernel TLS keeps a socket's state; written by userspace once the tls module's
/// BTF is readable (slot 0). Until then kTLS sends carry no version, cipher or records.
#[map]
static TLS_LAYOUT: Array<TlsLayout> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `stat::*`, all in the one entry: userspace reads them
/// with one bpf() call (each call that touches a map briefly keeps kprobe programs from
/// running on its CPU, so the fewer the better).
#[map]
static STATS: PerCpuArray<[u64; stat::COUNT as usize]> = PerCpuArray::with_max_entries(1, 0);

/// Aggregate mode (`top`, the exporter): totals per [`AggKey`], summed per CPU so that no
/// two programs ever write one value. Preallocated: before 6.1 tracing programs may only
/// use preallocated hash maps. Userspace clears the keys of a generation once some stay
/// idle (`AGG_GEN`), so the live sockets and threads of a busy server fit; a call that finds it full is counted
/// (`stat::AGG_FULL`), never silently lost.
#[map]
static AGG: PerCpuHashMap<AggKey, AggVal> = PerCpuHashMap::with_max_entries(8192, 0);

/// Aggregate mode: the generation new totals go to (slot 0: 0 or 1). Userspace switches
/// it, waits until no program can still be writing the old generation (an RCU grace
/// period: these programs run inside RCU read-side sections), then reads the old keys a
/// last time and deletes them. Deleting a key a program may be writing at that moment
/// would lose the calls it adds (a closed socket's address, and so its key, is reused by
/// the next connection).
#[map]
static AGG_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// Aggregate mode: log2 latency histograms per process and probe.
#[map]
static LAT: PerCpuHashMap<LatKey, LatHist> = PerCpuHashMap::with_max_entries(256, 0);

/// An all-zero histogram, the value a new `LAT` key starts from: 520 bytes would not fit
/// the program's stack next to the rest.
#[map]
static ZERO_HIST: PerCpuArray<LatHist> = PerCpuArray::with_max_entries(1, 0);

const IPPROTO_TCP: u16 = 6;
/// `bpf_map_update_elem` flag: fail with -EEXIST if the key is there.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = -17;
const NONE: u8 = Probe::NONE;

/// Parents a call can run inside, innermost first; `SENDFILE` stands for the configured
/// sendfile probe (`do_sendfile`, or the `sendfile64` syscall tracepoints).
const SENDFILE: u8 = 0xfe;
const UNDER_SENDFILE: [u8; 1] = [SENDFILE];
const UNDER_TLS: [u8; 7] = [
    Probe::TlsSwSendpage as u8,
    Probe::TlsSwSendmsg as u8,
    Probe::TlsSwSpliceEof as u8,
    Probe::TlsDeviceSendpage as u8,
    Probe::TlsDeviceSendmsg as u8,
    Probe::TcpSendmsg as u8,
    SENDFILE,
];
const TOP_LEVEL: [u8; 0] = [];

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(0) {
        // SAFETY: the pointer comes from a per-CPU array lookup of an index that exists,
        // and per-CPU values are never shared with another CPU; `get_mut` checks `idx`.
        if let Some(c) = unsafe { (*p).get_mut(idx as usize) } {
            *c += 1;
        }
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions; the binding is only marked unsafe
    // because it is a raw helper call.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn tid_tgid() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    (v as u32, (v >> 32) as u32)
}

/// Reads `size_of::<T>()` kernel bytes at `addr` into `dst` (zero-filled on failure).
#[inline(always)]
fn read_into<T: Copy>(addr: u64, dst: &mut T) -> bool {
    if addr == 0 {
        return false;
    }
    // SAFETY: bpf_probe_read_kernel checks the source address and fails cleanly; `dst` is
    // a valid, initialised destination of exactly the size passed.
    unsafe {
        generated::bpf_probe_read_kernel(
            (dst as *mut T).cast::<c_void>(),
            core::mem::size_of::<T>() as u32,
            addr as *const c_void,
        ) == 0
    }
}

/// Reads the `T` at `base + off` into `dst`; false (and `dst` untouched or zeroed) when
/// the offset is unknown or the read fails. No `Option<T>`: its `None` leaves the value's
/// bytes unwritten, and a copy of them is what 5.10's verifier rejects.
#[inline(always)]
fn read_off<T: Copy>(base: u64, off: u32, dst: &mut T) -> bool {
    off != OFF_UNKNOWN && base != 0 && read_into(base + off as u64, dst)
}

/// The thread's name, NUL-padded (zeros when the helper fails).
#[inline(always)]
fn current_comm(dst: &mut [u8; COMM_LEN]) {
    // SAFETY: the helper writes at most COMM_LEN bytes into `dst`, a valid, initialised
    // buffer of that size.
    unsafe {
        generated::bpf_get_current_comm(dst.as_mut_ptr().cast::<c_void>(), COMM_LEN as u32);
    }
}

#[inline(always)]
fn same_comm(a: &[u8; COMM_LEN], b: &[u8; COMM_LEN]) -> bool {
    let mut i = 0;
    while i < COMM_LEN {
        if a[i] != b[i] {
            return false;
        }
        if a[i] == 0 {
            return true;
        }
        i += 1;
    }
    true
}

/// The current task's process name: its thread-group leader's comm.
#[inline(always)]
fn process_comm(name: &mut [u8; COMM_LEN]) -> bool {
    // SAFETY: bpf_get_current_task has no preconditions; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { generated::bpf_get_current_task() };
    let mut leader = 0u64;
    read_off(task, setting!(off.task_group_leader), &mut leader)
        && read_off(leader, setting!(off.task_comm), name)
}

/// Does the current task's thread name, or its process's (the thread-group leader's),
/// equal `--comm`? Envoy's `wrk:worker_3` and a JVM's pool threads send for a process
/// whose name the user knows; the load's `ktls-load-srv` thread for `ktls-trace`.
#[inline(always)]
fn comm_wanted() -> bool {
    let want: [u8; COMM_LEN] = setting!(comm);
    let mut thread = [0u8; COMM_LEN];
    current_comm(&mut thread);
    if same_comm(&want, &thread) {
        return true;
    }
    let mut process = [0u8; COMM_LEN];
    process_comm(&mut process) && same_comm(&want, &process)
}

/// Remembers the process name of a thread that is not its process's main thread (once per
/// process; the main thread's events carry the name themselves).
#[inline(always)]
fn remember_process(tid: u32, tgid: u32) {
    // SAFETY: presence test only.
    if tid == tgid || unsafe { PROCS.get(tgid) }.is_some() {
        return;
    }
    let mut name = [0u8; COMM_LEN];
    if process_comm(&mut name) {
        let _ = PROCS.insert(tgid, name, 0);
    }
}

/// Does the current task pass the PID and name filters?
#[inline(always)]
fn task_wanted(tgid: u32) -> bool {
    if setting!(filter_pids) != 0 {
        // SAFETY: the value is only tested for presence, never dereferenced.
        if unsafe { PIDS.get(tgid) }.is_none() {
            return false;
        }
    }
    setting!(filter_comm) == 0 || comm_wanted()
}

/// Does this thread's name start with `prefix`?
#[inline(always)]
fn comm_starts_with(comm: &[u8; COMM_LEN], prefix: &[u8]) -> bool {
    let mut i = 0;
    while i < prefix.len() && i < COMM_LEN {
        if comm[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Is this call wanted? A call of a traced process is; so is a kernel worker's call on a
/// socket a traced process used (kernel TLS pushes a socket's records later from a
/// kworker, or from softirq work in ksoftirqd).
#[inline(always)]
fn wanted(tgid: u32, sk: u64) -> bool {
    if setting!(filter_pids) == 0 && setting!(filter_comm) == 0 {
        return true;
    }
    if task_wanted(tgid) {
        // SAFETY: presence test only.
        if sk != 0 && unsafe { SOCKS.get(sk) }.is_none() {
            let _ = SOCKS.insert(sk, tgid, 0);
        }
        return true;
    }
    // SAFETY: presence test only.
    if sk == 0 || unsafe { SOCKS.get(sk) }.is_none() {
        return false;
    }
    let mut comm = [0u8; COMM_LEN];
    current_comm(&mut comm);
    if comm_starts_with(&comm, b"kworker/") || comm_starts_with(&comm, b"ksoftirqd/") {
        return true;
    }
    // Another process on this socket: the traced one closed it and the kernel gave the
    // memory to a new socket (a client's, say). The entry is stale.
    let _ = SOCKS.remove(sk);
    false
}

/// Records a socket's addresses the first time it is seen.
#[inline(always)]
fn remember_socket(id: u64, sk: u64, tgid: u32) {
    // SAFETY: presence test only.
    if unsafe { SOCKINFO.get(id) }.is_some() {
        return;
    }
    const AF_INET6: u16 = 10;
    let mut info = SockInfo {
        family: 0,
        sport: 0,
        dport_be: 0,
        _pad: 0,
        owner: tgid,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    read_off(sk, setting!(off.skc_family), &mut info.family);
    read_off(sk, setting!(off.skc_num), &mut info.sport);
    read_off(sk, setting!(off.skc_dport), &mut info.dport_be);
    if info.family == AF_INET6 {
        read_off(sk, setting!(off.skc_v6_rcv_saddr), &mut info.saddr);
        read_off(sk, setting!(off.skc_v6_daddr), &mut info.daddr);
    } else {
        let (mut src, mut dst) = ([0u8; 4], [0u8; 4]);
        read_off(sk, setting!(off.skc_rcv_saddr), &mut src);
        read_off(sk, setting!(off.skc_daddr), &mut dst);
        info.saddr[..4].copy_from_slice(&src);
        info.daddr[..4].copy_from_slice(&dst);
    }
    let _ = SOCKINFO.insert(id, info, 0);
}

/// Finds the innermost probed call of this thread that `parents` lists.
#[inline(always)]
fn nesting(tid: u32, parents: &[u8]) -> (u8, u8) {
    let sendfile = setting!(sendfile_probe);
    for p in parents {
        let p = if *p == SENDFILE { sendfile } else { *p };
        // SAFETY: the entry is copied out at once; LRU eviction cannot free it while
        // this program runs (map values are RCU-protected).
        if let Some(outer) = unsafe { ACTIVE.get(((tid as u64) << 8) | p as u64) } {
            let root = if outer.root != NONE { outer.root } else { p };
            return (p, root);
        }
    }
    (NONE, NONE)
}

/// The kernel TLS state of a socket: its `tls_context` address, version and cipher, and
/// the transmit record sequence number now.
#[inline(always)]
fn tls_state(sk: u64, a: &mut Active) {
    let Some(layout) = TLS_LAYOUT.get(0) else {
        return;
    };
    let mut ctx = 0u64;
    if layout.valid == 0 || !read_off(sk, layout.icsk_ulp_data, &mut ctx) || ctx == 0 {
        return;
    }
    let (mut version, mut cipher) = (0u16, 0u16);
    if read_off(ctx, layout.version, &mut version) && read_off(ctx, layout.cipher, &mut cipher) {
        a.tls_version = version;
        a.tls_cipher = cipher;
        a.has |= has::TLS;
    }
    let mut seq = 0u64;
    if rec_seq(ctx, layout, &mut seq) {
        a.tls_ctx = ctx;
        a.rec_seq = seq;
        a.has |= has::RECORDS;
    }
}

/// `tls_context.tx.rec_seq` as a number (big endian on the wire and in memory).
#[inline(always)]
fn rec_seq(ctx: u64, layout: &TlsLayout, seq: &mut u64) -> bool {
    let mut at = ctx + layout.tx_rec_seq as u64;
    if layout.tx_rec_seq == OFF_UNKNOWN
        || (layout.rec_seq_is_ptr != 0 && !read_off(ctx, layout.tx_rec_seq, &mut at))
    {
        return false;
    }
    let mut bytes = [0u8; 8];
    if !read_into(at, &mut bytes) {
        return false;
    }
    *seq = u64::from_be_bytes(bytes);
    true
}

/// What a probe's entry knows about a call: `repr(C)` with every byte written (explicit
/// padding), so the compiler's copies of it never read an unwritten stack slot.
#[repr(C)]
struct Call {
    sk: u64,
    /// Read the first payload bytes from this `struct msghdr` (0: no).
    head_of: u64,
    /// The arguments, as they will be kept in `ACTIVE`.
    a: Active,
    probe: u8,
    /// Read the socket's kernel TLS state (a kTLS send).
    tls: u8,
    _pad: [u8; 6],
}

impl Call {
    #[inline(always)]
    fn new(probe: Probe, sk: u64, bytes: u64) -> Call {
        Call {
            sk,
            head_of: 0,
            a: Active {
                ts_ns: 0,
                bytes,
                sock: 0,
                tls_ctx: 0,
                rec_seq: 0,
                flags: 0,
                fd_out: 0,
                fd_in: 0,
                tls_version: 0,
                tls_cipher: 0,
                parent: NONE,
                root: NONE,
                has: has::LATENCY,
                _pad: [0; 5],
                head: [0; HEAD_LEN],
            },
            probe: probe as u8,
            tls: 0,
            _pad: [0; 6],
        }
    }

    #[inline(always)]
    fn flags(&mut self, flags: u32) {
        self.a.flags = flags;
        self.a.has |= has::FLAGS;
    }
}

/// Entry side: filter, remember arguments, nesting and socket state.
#[inline(always)]
fn enter(call: &mut Call, parents: &[u8]) {
    let (tid, tgid) = tid_tgid();
    if !wanted(tgid, call.sk) {
        return;
    }
    let (parent, root) = nesting(tid, parents);
    let a = &mut call.a;
    a.ts_ns = now();
    a.parent = parent;
    a.root = root;
    if call.sk != 0 {
        a.sock = sock_id(call.sk, setting!(sock_key));
        a.has |= has::SOCK;
        remember_socket(a.sock, call.sk, tgid);
        if call.tls != 0 {
            tls_state(call.sk, a);
        }
    }
    if call.head_of != 0 && payload_head(call.head_of, &mut a.head) {
        a.has |= has::HEAD;
    }
    let key = ((tid as u64) << 8) | call.probe as u64;
    // BPF_NOEXIST costs nothing when the slot is free (every call but a missed one): a
    // thread cannot enter a non-recursive function while it is still inside it, so an
    // entry already there is a call whose return the kretprobe missed (its `maxactive`
    // instances were all in use). Counted, then replaced.
    match ACTIVE.insert(key, *a, BPF_NOEXIST) {
        Ok(()) => {}
        Err(EEXIST) => {
            bump(stat::RETURN_MISSED + call.probe as u32);
            let _ = ACTIVE.insert(key, *a, 0);
        }
        Err(_) => bump(stat::ACTIVE_FULL),
    }
}

/// Return side: take the entry back and emit one event.
#[inline(always)]
fn leave<C: EbpfContext>(ctx: &C, probe: Probe, ret: Ret) {
    let (tid, tgid) = tid_tgid();
    let key = active_key(tid, probe);
    // SAFETY: copied out before the entry is removed.
    let a = match unsafe { ACTIVE.get(key) } {
        Some(a) => *a,
        None => return, // filtered out at entry, or probes attached mid-call
    };
    let _ = ACTIVE.remove(key);
    let end = now();
    let mut hasf = a.has;
    if ret.known {
        hasf |= has::RET;
    }
    let mut records = 0u32;
    if hasf & has::RECORDS != 0 {
        // The records this call closed: how far the sequence number moved. A key update
        // restarts it (TLS 1.3, 6.14+): no count then.
        let mut seq = 0u64;
        let read = match TLS_LAYOUT.get(0) {
            Some(layout) => rec_seq(a.tls_ctx, layout, &mut seq),
            None => false,
        };
        let moved = seq.wrapping_sub(a.rec_seq);
        if read && moved <= MAX_RECORDS_PER_CALL {
            records = moved as u32;
        } else {
            hasf &= !has::RECORDS;
        }
    }
    if setting!(aggregate) != 0 {
        let done = if ret.known && ret.value > 0 {
            ret.value as u64
        } else {
            0
        };
        aggregate(
            probe,
            AggKey {
                sock: a.sock,
                pid: tgid,
                tid,
                tls_version: a.tls_version,
                tls_cipher: a.tls_cipher,
                probe: probe as u8,
                parent: a.parent,
                root: a.root,
                facts: facts::of(hasf, a.flags, &a.head, a.bytes, ret.value),
                comm: [0; COMM_LEN],
                generation: 0,
                _pad: [0; 7],
            },
            &Done {
                bytes: a.bytes,
                done,
                records: records as u64,
                latency_ns: end.wrapping_sub(a.ts_ns),
                timed: 1,
                _pad: [0; 7],
            },
        );
        return;
    }
    emit(
        ctx,
        Event {
            ts_ns: end,
            latency_ns: end.wrapping_sub(a.ts_ns),
            bytes: a.bytes,
            ret: ret.value,
            sock: a.sock,
            pid: tgid,
            tid,
            flags: a.flags,
            fd_out: a.fd_out,
            fd_in: a.fd_in,
            records,
            tls_version: a.tls_version,
            tls_cipher: a.tls_cipher,
            probe: probe as u8,
            parent: a.parent,
            root: a.root,
            has: hasf,
            comm: [0; COMM_LEN],
            head: a.head,
        },
    );
}

/// `bpf_ringbuf_submit` flags (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Waking the reader for every record costs a context switch per event; with
/// `wakeup_bytes` set, the reader is only woken once that much data waits, and drains
/// the rest on its own timer.
#[inline(always)]
fn wakeup_flags() -> u64 {
    match setting!(wakeup_bytes) {
        0 => 0,
        limit if EVENTS.query(BPF_RB_AVAIL_DATA) >= limit => BPF_RB_FORCE_WAKEUP,
        _ => BPF_RB_NO_WAKEUP,
    }
}

#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, mut ev: Event) {
    current_comm(&mut ev.comm);
    remember_process(ev.tid, ev.pid);
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            slot.write(ev);
            slot.submit(wakeup_flags());
        }
        None => {
            bump(stat::RINGBUF_FULL);
            if setting!(debug) != 0 {
                debug!(ctx, "ring buffer full: event of probe {} dropped", ev.probe);
            }
        }
    }
}

/// A completed call, for the aggregate maps.
#[repr(C)]
struct Done {
    bytes: u64,
    done: u64,
    records: u64,
    latency_ns: u64,
    /// Non-zero: `latency_ns` is known.
    timed: u8,
    _pad: [u8; 7],
}

/// Aggregate mode: adds one completed call to its key's totals (and its latency to the
/// process's histogram for the probes whose latency is shown).
#[inline(always)]
fn aggregate(probe: Probe, mut key: AggKey, d: &Done) {
    current_comm(&mut key.comm);
    key.generation = AGG_GEN.get(0).map_or(0, |g| (*g & 1) as u8);
    remember_process(key.tid, key.pid);
    match AGG.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: this CPU's value of a per-CPU map. Only a program interrupting this
            // one on the same CPU could write it too, and the probed functions are
            // process-context send paths (kprobe programs do not nest at all).
            unsafe {
                (*v).calls += 1;
                (*v).bytes += d.bytes;
                (*v).done += d.done;
                (*v).records += d.records;
            }
        }
        None => {
            let v = AggVal {
                calls: 1,
                bytes: d.bytes,
                done: d.done,
                records: d.records,
            };
            // Another CPU may create the key at the same time: its value is that CPU's,
            // so inserting ours (this CPU's slot) is still right; an existing key is
            // only an error with BPF_NOEXIST, which is not used here.
            if AGG.insert(key, v, 0).is_err() {
                bump(stat::AGG_FULL);
            }
        }
    }
    if d.timed == 0 || !probe.latency_shown() {
        return;
    }
    let lk = LatKey {
        pid: key.pid,
        probe: key.probe,
        generation: key.generation,
        _pad: [0; 2],
    };
    let bucket = lat_bucket(d.latency_ns);
    if LAT.get_ptr_mut(lk).is_none() {
        let Some(zero) = ZERO_HIST.get_ptr(0) else {
            return;
        };
        // A reference into the map, not a value: a 520-byte copy would not fit the stack.
        // SAFETY: a valid per-CPU array value (all zeros, never written).
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = LAT.insert(lk, unsafe { &*zero }, BPF_NOEXIST);
        if inserted.is_err() && LAT.get_ptr_mut(lk).is_none() {
            bump(stat::AGG_FULL);
            return;
        }
    }
    if let Some(h) = LAT.get_ptr_mut(lk) {
        // SAFETY: this CPU's value; the index is below LAT_BUCKETS by a mask, which is
        // also what lets the verifier accept the access.
        if let Some(c) = unsafe { (*h).buckets.get_mut(bucket & (LAT_BUCKETS - 1)) } {
            *c += 1;
        }
        // SAFETY: as above, this CPU's value, which only this program run writes now.
        unsafe { (*h).sum_ns = (*h).sum_ns.wrapping_add(d.latency_ns) };
    }
}

/// The arguments of a probed call, however the program was reached: a kprobe's saved
/// registers, or a BPF trampoline's argument array.
trait Args: EbpfContext {
    fn arg(&self, n: usize) -> u64;
}

impl Args for ProbeContext {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        ProbeContext::arg::<u64>(self, n).unwrap_or(0)
    }
}

/// A BPF trampoline's context (fentry/fexit): the arguments are an array of u64 at `ctx`.
/// They are copied with bpf_probe_read_kernel rather than loaded, so the verifier sees
/// plain numbers: a loaded pointer argument is a typed kernel pointer, which may not be
/// mixed into a socket id ([`sock_id`]) or compared like a number.
struct Tramp(*mut c_void);

impl EbpfContext for Tramp {
    fn as_ptr(&self) -> *mut c_void {
        self.0
    }
}

impl Args for Tramp {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        let mut v = 0u64;
        read_into(self.0 as u64 + 8 * n as u64, &mut v);
        v
    }
}

/// Where a probed call's return value is.
trait RetVal {
    fn ret_u64(&self) -> u64;
}

impl RetVal for RetProbeContext {
    #[inline(always)]
    fn ret_u64(&self) -> u64 {
        self.ret()
    }
}

/// fexit of a function with `N` arguments: the return value follows them in the array
/// (read directly: bpf_get_func_ret needs 5.17, and Debian's 5.10 has trampolines).
struct TrampRet<const N: usize>(*mut c_void);

impl<const N: usize> RetVal for TrampRet<N> {
    #[inline(always)]
    fn ret_u64(&self) -> u64 {
        Tramp(self.0).arg(N)
    }
}

/// The first bytes a `sendmsg` carries, when they come from user memory (ITER_UBUF for a
/// single-buffer write/send, ITER_IOVEC for writev/sendmsg; before 5.14 `iov_iter.type`
/// carries the direction in bit 0). Kernel-internal sends (pages, kvecs) are left out.
#[inline(always)]
fn payload_head(msg: u64, head: &mut [u8; HEAD_LEN]) -> bool {
    let iter_off = setting!(off.msghdr_iter);
    if msg == 0 || iter_off == OFF_UNKNOWN {
        return false;
    }
    let iter = msg + iter_off as u64;
    let type_off = setting!(off.iter_type);
    let ty = if setting!(off.iter_type_old) != 0 {
        // `unsigned int type`: the iter type as a bit, READ/WRITE in bit 0.
        let mut t = 0u32;
        if !read_off(iter, type_off, &mut t) {
            return false;
        }
        t & !1
    } else {
        let mut t = 0u8;
        if !read_off(iter, type_off, &mut t) {
            return false;
        }
        t as u32
    };
    let mut user_ptr = 0u64;
    if ty == setting!(off.iter_ubuf_val) {
        if !read_off(iter, setting!(off.iter_ubuf), &mut user_ptr) {
            return false;
        }
    } else if ty == setting!(off.iter_iovec_val) {
        // iov_base is the first member of struct iovec.
        let mut iov = 0u64;
        if !read_off(iter, setting!(off.iter_iov), &mut iov) || !read_into(iov, &mut user_ptr) {
            return false;
        }
    } else {
        return false;
    }
    if user_ptr == 0 {
        return false;
    }
    // SAFETY: bpf_probe_read_user checks the user address and fails cleanly (e.g. on a
    // page that is not resident: then the head is simply unknown); `head` is a valid,
    // initialised destination of HEAD_LEN bytes.
    unsafe {
        generated::bpf_probe_read_user(
            head.as_mut_ptr().cast::<c_void>(),
            HEAD_LEN as u32,
            user_ptr as *const c_void,
        ) == 0
    }
}

/// `int f(struct sock *sk, struct msghdr *msg, size_t size)`
#[inline(always)]
fn sendmsg_call<C: Args>(ctx: &C, probe: Probe) -> Call {
    let msg = ctx.arg(1);
    let mut c = Call::new(probe, ctx.arg(0), ctx.arg(2));
    let mut flags = 0u32;
    if read_off(msg, setting!(off.msghdr_flags), &mut flags) {
        c.flags(flags);
    }
    c
}

/// `int f(struct sock *sk, struct page *page, int offset, size_t size, int flags)`
#[inline(always)]
fn sendpage_call<C: Args>(ctx: &C, probe: Probe) -> Call {
    let mut c = Call::new(probe, ctx.arg(0), ctx.arg(3));
    c.flags(ctx.arg(4) as u32);
    c
}

/// `void f(struct socket *sock)`: the sock is `sock->sk`.
#[inline(always)]
fn socket_call<C: Args>(ctx: &C, probe: Probe) -> Call {
    let mut sk = 0u64;
    read_off(ctx.arg(0), setting!(off.socket_sk), &mut sk);
    Call::new(probe, sk, 0)
}

/// A kTLS send: the same, plus the socket's TLS state.
#[inline(always)]
fn tls(mut c: Call) -> Call {
    c.tls = 1;
    c
}

/// A return value, and whether the function has one.
#[derive(Clone, Copy)]
struct Ret {
    value: i64,
    known: bool,
}

/// Return value of a function declared `int`: only the low 32 bits of the register are
/// defined by the x86-64 ABI.
#[inline(always)]
fn int_ret<R: RetVal>(ctx: &R) -> Ret {
    let r: u64 = ctx.ret_u64();
    Ret {
        value: r as u32 as i32 as i64,
        known: true,
    }
}

/// Return value of a function declared `ssize_t` / `long`.
#[inline(always)]
fn long_ret<R: RetVal>(ctx: &R) -> Ret {
    Ret {
        value: ctx.ret_u64() as i64,
        known: true,
    }
}

/// No return value (`void`).
#[inline(always)]
fn no_ret<R: RetVal>(_ctx: &R) -> Ret {
    Ret {
        value: 0,
        known: false,
    }
}

/// A kprobe + kretprobe pair for the `Kfunc` probe `$probe`: the programs are named
/// `<function>_entry` and `<function>_ret` (`ktls_trace_common::probes`). The entry builds
/// a [`Call`] with `$call`, the return reads the return value with `$ret`.
macro_rules! probe_pair {
    ($entry:ident, $exit:ident, $probe:expr, $call:expr, $parents:ident, $ret:ident) => {
        #[kprobe]
        pub fn $entry(ctx: ProbeContext) -> u32 {
            let mut call: Call = ($call)(&ctx, $probe);
            enter(&mut call, &$parents);
            0
        }

        #[kretprobe]
        pub fn $exit(ctx: RetProbeContext) -> u32 {
            leave(&ctx, $probe, $ret(&ctx));
            0
        }
    };
}

/// The same pair as BPF trampolines (fentry + fexit), for a function of vmlinux with
/// `$nargs` arguments: programs `<function>_fentry` and `<function>_fexit`. Cheaper than a
/// kprobe pair, and an fexit follows every call (a kretprobe only `maxactive` at once).
/// The module's functions (kernel TLS) keep kprobes: aya 0.14 cannot load a trampoline
/// against a module's BTF (docs/performance.md).
macro_rules! trampoline_pair {
    ($entry:ident, $exit:ident, $func:literal, $probe:expr, $call:expr, $parents:ident, $ret:ident, $nargs:literal) => {
        #[fentry(function = $func)]
        pub fn $entry(ctx: FEntryContext) -> u32 {
            let t = Tramp(ctx.as_ptr());
            let mut call: Call = ($call)(&t, $probe);
            enter(&mut call, &$parents);
            0
        }

        #[fexit(function = $func)]
        pub fn $exit(ctx: FExitContext) -> u32 {
            leave(&ctx, $probe, $ret(&TrampRet::<$nargs>(ctx.as_ptr())));
            0
        }
    };
}

// ---- kprobes: sendfile ----

/// sendfile's file descriptors.
#[inline(always)]
fn fds(c: &mut Call, out_fd: i32, in_fd: i32) {
    c.a.fd_out = out_fd;
    c.a.fd_in = in_fd;
    c.a.has |= has::FDS;
}

/// `ssize_t do_sendfile(int out_fd, int in_fd, loff_t *ppos, size_t count, loff_t max)`
#[inline(always)]
fn sendfile_call<C: Args>(ctx: &C, probe: Probe) -> Call {
    let (out_fd, in_fd) = (ctx.arg(0) as i32, ctx.arg(1) as i32);
    let mut c = Call::new(probe, 0, ctx.arg(3));
    fds(&mut c, out_fd, in_fd);
    if setting!(debug) != 0 {
        debug!(
            ctx,
            "do_sendfile out_fd={} in_fd={} count={}", out_fd, in_fd, c.a.bytes
        );
    }
    c
}

probe_pair!(
    do_sendfile_entry,
    do_sendfile_ret,
    Probe::DoSendfile,
    sendfile_call,
    TOP_LEVEL,
    long_ret
);

trampoline_pair!(
    do_sendfile_fentry,
    do_sendfile_fexit,
    "do_sendfile",
    Probe::DoSendfile,
    sendfile_call,
    TOP_LEVEL,
    long_ret,
    5
);

// ---- kprobes: kernel TLS ----

probe_pair!(
    tls_sw_sendmsg_entry,
    tls_sw_sendmsg_ret,
    Probe::TlsSwSendmsg,
    |ctx, p| tls(sendmsg_call(ctx, p)),
    UNDER_SENDFILE,
    int_ret
);

probe_pair!(
    tls_sw_sendpage_entry,
    tls_sw_sendpage_ret,
    Probe::TlsSwSendpage,
    |ctx, p| tls(sendpage_call(ctx, p)),
    UNDER_SENDFILE,
    int_ret
);

probe_pair!(
    tls_sw_splice_eof_entry,
    tls_sw_splice_eof_ret,
    Probe::TlsSwSpliceEof,
    |ctx, p| tls(socket_call(ctx, p)),
    UNDER_SENDFILE,
    no_ret
);

probe_pair!(
    tls_device_sendmsg_entry,
    tls_device_sendmsg_ret,
    Probe::TlsDeviceSendmsg,
    |ctx, p| tls(sendmsg_call(ctx, p)),
    UNDER_SENDFILE,
    int_ret
);

probe_pair!(
    tls_device_sendpage_entry,
    tls_device_sendpage_ret,
    Probe::TlsDeviceSendpage,
    |ctx, p| tls(sendpage_call(ctx, p)),
    UNDER_SENDFILE,
    int_ret
);

// ---- kprobes: TCP ----

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`: the socket-level
/// send of user data, whose first bytes tell user-space TLS from plain.
#[inline(always)]
fn tcp_sendmsg_call<C: Args>(ctx: &C, probe: Probe) -> Call {
    let mut c = sendmsg_call(ctx, probe);
    c.head_of = ctx.arg(1);
    c
}

probe_pair!(
    tcp_sendmsg_entry,
    tcp_sendmsg_ret,
    Probe::TcpSendmsg,
    tcp_sendmsg_call,
    UNDER_SENDFILE,
    int_ret
);

trampoline_pair!(
    tcp_sendmsg_fentry,
    tcp_sendmsg_fexit,
    "tcp_sendmsg",
    Probe::TcpSendmsg,
    tcp_sendmsg_call,
    UNDER_SENDFILE,
    int_ret,
    3
);

probe_pair!(
    tcp_sendmsg_locked_entry,
    tcp_sendmsg_locked_ret,
    Probe::TcpSendmsgLocked,
    sendmsg_call,
    UNDER_TLS,
    int_ret
);

trampoline_pair!(
    tcp_sendmsg_locked_fentry,
    tcp_sendmsg_locked_fexit,
    "tcp_sendmsg_locked",
    Probe::TcpSendmsgLocked,
    sendmsg_call,
    UNDER_TLS,
    int_ret,
    3
);

probe_pair!(
    do_tcp_sendpages_entry,
    do_tcp_sendpages_ret,
    Probe::DoTcpSendpages,
    sendpage_call,
    UNDER_TLS,
    long_ret
);

trampoline_pair!(
    do_tcp_sendpages_fentry,
    do_tcp_sendpages_fexit,
    "do_tcp_sendpages",
    Probe::DoTcpSendpages,
    sendpage_call,
    UNDER_TLS,
    long_ret,
    5
);

// ---- tracepoints ----

// The syscall tracepoint records are fixed by the syscall ABI: after the 8-byte common
// header and `__syscall_nr` (padded to 16), every argument takes an 8-byte slot.
const SYS_ARG0: usize = 16;
const SYS_ARG1: usize = 24;
const SYS_ARG3: usize = 40;
const SYS_RET: usize = 16;

/// Reads a `T` at `off` of a tracepoint record (zero when the read fails).
#[inline(always)]
fn tp_read<T: Copy + Default>(ctx: &TracePointContext, off: usize) -> T {
    let mut v = T::default();
    read_into(ctx.as_ptr() as u64 + off as u64, &mut v);
    v
}

#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    let (out_fd, in_fd) = (
        tp_read::<u64>(&ctx, SYS_ARG0) as i32,
        tp_read::<u64>(&ctx, SYS_ARG1) as i32,
    );
    let mut c = Call::new(Probe::Sendfile64, 0, tp_read::<u64>(&ctx, SYS_ARG3));
    fds(&mut c, out_fd, in_fd);
    enter(&mut c, &TOP_LEVEL);
    0
}

#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    let ret = Ret {
        value: tp_read::<i64>(&ctx, SYS_RET),
        known: true,
    };
    leave(&ctx, Probe::Sendfile64, ret);
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let (sk_off, ret_off, proto_off) = (
        setting!(off.tp_ssl_sk),
        setting!(off.tp_ssl_ret),
        setting!(off.tp_ssl_proto),
    );
    if sk_off == OFF_UNKNOWN || ret_off == OFF_UNKNOWN || proto_off == OFF_UNKNOWN {
        return 0;
    }
    // Offsets come from this tracepoint's format file on the running kernel.
    let sk = tp_read::<u64>(&ctx, sk_off as usize);
    let ret = tp_read::<i32>(&ctx, ret_off as usize);
    if tp_read::<u16>(&ctx, proto_off as usize) != IPPROTO_TCP {
        return 0;
    }
    let (tid, tgid) = tid_tgid();
    if !wanted(tgid, sk) {
        return 0;
    }
    let (parent, root) = nesting(tid, &UNDER_SENDFILE);
    let id = sock_id(sk, setting!(sock_key));
    remember_socket(id, sk, tgid);
    // The tracepoint fires after sendmsg returned: `ret` is what it accepted.
    if setting!(aggregate) != 0 {
        let done = ret.max(0) as u64;
        aggregate(
            Probe::SockSendLength,
            AggKey {
                sock: id,
                pid: tgid,
                tid,
                tls_version: 0,
                tls_cipher: 0,
                probe: Probe::SockSendLength as u8,
                parent,
                root,
                facts: facts::of(has::RET | has::SOCK, 0, &[0; HEAD_LEN], done, ret as i64),
                comm: [0; COMM_LEN],
                generation: 0,
                _pad: [0; 7],
            },
            &Done {
                bytes: done,
                done,
                records: 0,
                latency_ns: 0,
                timed: 0,
                _pad: [0; 7],
            },
        );
        return 0;
    }
    emit(
        &ctx,
        Event {
            ts_ns: now(),
            latency_ns: 0,
            bytes: ret.max(0) as u64,
            ret: ret as i64,
            sock: id,
            pid: tgid,
            tid,
            flags: 0,
            fd_out: 0,
            fd_in: 0,
            records: 0,
            tls_version: 0,
            tls_cipher: 0,
            probe: Probe::SockSendLength as u8,
            parent,
            root,
            has: has::RET | has::SOCK,
            comm: [0; COMM_LEN],
            head: [0; HEAD_LEN],
        },
    );
    0
}

// ---- fentry: only loaded by `doctor`, to find out whether this kernel accepts fentry ----

#[fentry(function = "do_sendfile")]
pub fn fentry_check(_ctx: FEntryContext) -> u32 {
    0
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic at run time: the verifier rejects any program
    // whose panic path is reachable, so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

/// bpf_probe_read_kernel and the ring buffer helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "ktls-trace-ebpf is an eBPF object: it is built for bpfel-unknown-none and loaded by ktls-trace"
    );
}
