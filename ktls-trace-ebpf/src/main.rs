//! eBPF side of ktls-trace: kprobes/kretprobes on the kernel TLS transmit path and, for
//! kernels without kprobes, tracepoints. Every program feeds the one `EVENTS` ring buffer
//! with fixed-size [`Event`] records (layout in `ktls-trace-common`).
//!
//! How a call becomes an event:
//! 1. the entry probe filters (PID / comm / socket of a traced process), stores the
//!    arguments in `ACTIVE` keyed by (thread, probe), and records which probed call of the
//!    same thread it runs inside (`parent`, `root`): that is how a TCP push inside a kTLS
//!    send inside a sendfile is linked to both;
//! 2. the return probe takes the entry back out, adds return value and latency and
//!    reserves one ring-buffer record; a full ring buffer is counted in `STATS`, never
//!    silently lost.
//!
//! Struct fields are read at offsets computed by userspace from the running kernel's BTF
//! and set as globals at load time: Rust eBPF gets no CO-RE relocations (aya-rs/aya#349),
//! and `struct msghdr` moved between 6.1 and 6.12.
// On the BPF target this is a no_std, no_main object; built for the host (as part of
// `cargo build/clippy --workspace`) it is an ordinary binary that does nothing, so the
// whole workspace builds and lints with one command.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user_buf,
    },
    macros::{fentry, kprobe, kretprobe, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, ProbeContext, RetProbeContext, TracePointContext},
};
use aya_log_ebpf::debug;
use ktls_trace_common::{
    Active, COMM_LEN, Event, HEAD_LEN, OFF_UNKNOWN, Probe, SockInfo, active_key, has, sock_id, stat,
};

// ---- configuration, patched by userspace at load time (EbpfLoader::set_global) ----
//
// SAFETY (every `#[unsafe(no_mangle)]` in this file): an unmangled name could clash with
// another symbol of the same name; these names (the globals below and LICENSE) are unique
// in this object, which links nothing else with C names, and they are exactly the names
// userspace looks up (`ktls_trace_common::names`).

/// Non-zero: only processes in `PIDS` (and sockets in `SOCKS`) are traced.
#[unsafe(no_mangle)]
static FILTER_PIDS: Global<u8> = Global::new(0);
/// Non-zero: only tasks whose comm equals `COMM` are traced.
#[unsafe(no_mangle)]
static FILTER_COMM: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static COMM: Global<[u8; COMM_LEN]> = Global::new([0; COMM_LEN]);
/// Offset of `msg_flags` in `struct msghdr`.
#[unsafe(no_mangle)]
static MSGHDR_FLAGS_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
/// Offset of `sk` in `struct socket`.
#[unsafe(no_mangle)]
static SOCKET_SK_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
/// Per-run key for socket ids.
#[unsafe(no_mangle)]
static SOCK_KEY: Global<u64> = Global::new(0);
/// Wake the ring-buffer reader only when this many bytes wait (0: on every event).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);
/// Non-zero: emit aya-log debug records.
#[unsafe(no_mangle)]
static DEBUG: Global<u8> = Global::new(0);
/// Field offsets of the `sock:sock_send_length` tracepoint record (from its format file).
#[unsafe(no_mangle)]
static TP_SSL_SK_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static TP_SSL_RET_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static TP_SSL_PROTO_OFF: Global<u32> = Global::new(OFF_UNKNOWN);

/// `struct iov_iter` inside `struct msghdr`, for reading the first payload bytes of a
/// send from user memory (the TLS record header test of `top`): offsets of `msg_iter`,
/// `iter_type`, `ubuf` and `__iov` (`iov` before 6.4), and the values of ITER_UBUF and
/// ITER_IOVEC (the enum was reordered in 6.4).
#[unsafe(no_mangle)]
static MSGHDR_ITER_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static ITER_TYPE_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static ITER_UBUF_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static ITER_IOV_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static ITER_UBUF_VAL: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static ITER_IOVEC_VAL: Global<u32> = Global::new(OFF_UNKNOWN);

/// `struct sock_common` fields for [`SockInfo`] (offsets from BTF).
#[unsafe(no_mangle)]
static SKC_FAMILY_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static SKC_NUM_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static SKC_DPORT_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static SKC_DADDR_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static SKC_RCV_SADDR_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static SKC_V6_DADDR_OFF: Global<u32> = Global::new(OFF_UNKNOWN);
#[unsafe(no_mangle)]
static SKC_V6_RCV_SADDR_OFF: Global<u32> = Global::new(OFF_UNKNOWN);

// ---- maps ----

/// The one event stream to userspace. Userspace may resize it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Calls in flight, keyed by `active_key(tid, probe)`. LRU so that a return that never
/// comes (a kretprobe missed under load) cannot fill it for good.
#[map]
static ACTIVE: LruHashMap<u64, Active> = LruHashMap::with_max_entries(16384, 0);

/// Traced process ids (tgid), when `FILTER_PIDS` is set.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Sockets (raw `struct sock` address -> owner tgid) seen in a traced process: kTLS may
/// push a socket's records later from a kworker, which must still count for it.
#[map]
static SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Addresses of the sockets seen, by socket id (read by userspace for the connection view).
#[map]
static SOCKINFO: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(16384, 0);

/// Per-CPU counters, indexed by `stat::*`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

const IPPROTO_TCP: u16 = 6;

// Parents a call can run inside, innermost first.
const UNDER_SENDFILE: [Probe; 1] = [Probe::DoSendfile];
const UNDER_SENDFILE64: [Probe; 1] = [Probe::Sendfile64];
const UNDER_TLS: [Probe; 7] = [
    Probe::TlsSwSendpage,
    Probe::TlsSwSendmsg,
    Probe::TlsSwSpliceEof,
    Probe::TlsDeviceSendpage,
    Probe::TlsDeviceSendmsg,
    Probe::TcpSendmsg,
    Probe::DoSendfile,
];
/// A record is pushed from inside a kTLS send (or later by the tx worker: no parent).
const UNDER_TLS_SEND: [Probe; 4] = [
    Probe::TlsSwSendpage,
    Probe::TlsSwSendmsg,
    Probe::TlsSwSpliceEof,
    Probe::DoSendfile,
];
const TOP_LEVEL: [Probe; 0] = [];

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: the pointer comes from a per-CPU array lookup of an index that exists,
        // and per-CPU values are never shared with another CPU.
        unsafe { *p += 1 };
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

/// Does the current task pass the PID and comm filters?
#[inline(always)]
fn task_wanted(tgid: u32) -> bool {
    if FILTER_PIDS.load() != 0 {
        // SAFETY: the value is only tested for presence, never dereferenced.
        if unsafe { PIDS.get(tgid) }.is_none() {
            return false;
        }
    }
    if FILTER_COMM.load() != 0 {
        let want = COMM.load();
        match bpf_get_current_comm() {
            Ok(comm) => {
                let mut i = 0;
                while i < COMM_LEN {
                    if comm[i] != want[i] {
                        return false;
                    }
                    if comm[i] == 0 {
                        break;
                    }
                    i += 1;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Is this call wanted? A call on a socket of a traced process is, whoever runs it.
#[inline(always)]
fn wanted(tgid: u32, sk: u64) -> bool {
    let filtering = FILTER_PIDS.load() != 0 || FILTER_COMM.load() != 0;
    if !filtering {
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
    sk != 0 && unsafe { SOCKS.get(sk) }.is_some()
}

/// Reads `size_of::<T>()` bytes at `base + off`, or None when the offset is unknown.
#[inline(always)]
fn read_at<T>(base: u64, off: u32) -> Option<T> {
    if off == OFF_UNKNOWN {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// Records a socket's addresses the first time it is seen.
#[inline(always)]
fn remember_socket(id: u64, sk: u64, tgid: u32) {
    // SAFETY: presence test only.
    if unsafe { SOCKINFO.get(id) }.is_some() {
        return;
    }
    const AF_INET6: u16 = 10;
    let family: u16 = read_at(sk, SKC_FAMILY_OFF.load()).unwrap_or(0);
    let mut info = SockInfo {
        family,
        sport: read_at(sk, SKC_NUM_OFF.load()).unwrap_or(0),
        dport_be: read_at(sk, SKC_DPORT_OFF.load()).unwrap_or(0),
        _pad: 0,
        owner: tgid,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    if family == AF_INET6 {
        info.saddr = read_at(sk, SKC_V6_RCV_SADDR_OFF.load()).unwrap_or([0; 16]);
        info.daddr = read_at(sk, SKC_V6_DADDR_OFF.load()).unwrap_or([0; 16]);
    } else {
        let s: [u8; 4] = read_at(sk, SKC_RCV_SADDR_OFF.load()).unwrap_or([0; 4]);
        let d: [u8; 4] = read_at(sk, SKC_DADDR_OFF.load()).unwrap_or([0; 4]);
        info.saddr[..4].copy_from_slice(&s);
        info.daddr[..4].copy_from_slice(&d);
    }
    let _ = SOCKINFO.insert(id, info, 0);
}

/// Finds the innermost probed call of this thread that `parents` lists.
#[inline(always)]
fn nesting(tid: u32, parents: &[Probe]) -> (u8, u8) {
    for p in parents {
        // SAFETY: the entry is copied out at once; LRU eviction cannot free it while
        // this program runs (map values are RCU-protected).
        if let Some(outer) = unsafe { ACTIVE.get(active_key(tid, *p)) } {
            let root = if outer.root != Probe::NONE {
                outer.root
            } else {
                *p as u8
            };
            return (*p as u8, root);
        }
    }
    (Probe::NONE, Probe::NONE)
}

/// Reads `msg->msg_flags` at the offset userspace found in BTF.
#[inline(always)]
fn msg_flags(msg: u64) -> Option<u32> {
    let off = MSGHDR_FLAGS_OFF.load();
    if off == OFF_UNKNOWN || msg == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one.
    unsafe { bpf_probe_read_kernel((msg + off as u64) as *const u32) }.ok()
}

/// Entry side: filter, remember arguments and nesting.
#[inline(always)]
fn enter(
    probe: Probe,
    sk: u64,
    bytes: u64,
    flags: Option<u32>,
    fds: Option<(i32, i32)>,
    parents: &[Probe],
) {
    enter_with_head(probe, sk, bytes, flags, fds, parents, None);
}

/// [`enter`] that also keeps the first payload bytes.
#[inline(always)]
fn enter_with_head(
    probe: Probe,
    sk: u64,
    bytes: u64,
    flags: Option<u32>,
    fds: Option<(i32, i32)>,
    parents: &[Probe],
    head: Option<[u8; HEAD_LEN]>,
) {
    let (tid, tgid) = tid_tgid();
    if !wanted(tgid, sk) {
        return;
    }
    let (parent, root) = nesting(tid, parents);
    let mut a = Active {
        ts_ns: now(),
        bytes,
        sock: 0,
        flags: 0,
        fd_out: 0,
        fd_in: 0,
        parent,
        root,
        has: has::LATENCY,
        _pad: 0,
        head: [0; HEAD_LEN],
    };
    if sk != 0 {
        a.sock = sock_id(sk, SOCK_KEY.load());
        a.has |= has::SOCK;
        remember_socket(a.sock, sk, tgid);
    }
    if let Some(f) = flags {
        a.flags = f;
        a.has |= has::FLAGS;
    }
    if let Some((o, i)) = fds {
        a.fd_out = o;
        a.fd_in = i;
        a.has |= has::FDS;
    }
    if let Some(h) = head {
        a.head = h;
        a.has |= has::HEAD;
    }
    if ACTIVE.insert(active_key(tid, probe), a, 0).is_err() {
        bump(stat::ACTIVE_FULL);
    }
}

/// Return side: take the entry back and emit one event.
#[inline(always)]
fn leave<C: EbpfContext>(ctx: &C, probe: Probe, ret: Option<i64>) {
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
    if ret.is_some() {
        hasf |= has::RET;
    }
    emit(
        ctx,
        Event {
            ts_ns: end,
            latency_ns: end.wrapping_sub(a.ts_ns),
            bytes: a.bytes,
            ret: ret.unwrap_or(0),
            sock: a.sock,
            pid: tgid,
            tid,
            flags: a.flags,
            fd_out: a.fd_out,
            fd_in: a.fd_in,
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
/// `WAKEUP_BYTES` set, the reader is only woken once that much data waits, and drains
/// the rest on its own timer.
#[inline(always)]
fn wakeup_flags() -> u64 {
    match WAKEUP_BYTES.load() {
        0 => 0,
        limit if EVENTS.query(BPF_RB_AVAIL_DATA) >= limit => BPF_RB_FORCE_WAKEUP,
        _ => BPF_RB_NO_WAKEUP,
    }
}

#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, mut ev: Event) {
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            slot.write(ev);
            slot.submit(wakeup_flags());
        }
        None => {
            bump(stat::RINGBUF_FULL);
            if DEBUG.load() != 0 {
                debug!(ctx, "ring buffer full: event of probe {} dropped", ev.probe);
            }
        }
    }
}

#[inline(always)]
fn arg_u64(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

// ---- kprobes: sendfile ----

#[kprobe]
pub fn do_sendfile_entry(ctx: ProbeContext) -> u32 {
    // ssize_t do_sendfile(int out_fd, int in_fd, loff_t *ppos, size_t count, loff_t max)
    let out_fd = arg_u64(&ctx, 0) as i32;
    let in_fd = arg_u64(&ctx, 1) as i32;
    let count = arg_u64(&ctx, 3);
    if DEBUG.load() != 0 {
        debug!(
            &ctx,
            "do_sendfile out_fd={} in_fd={} count={}", out_fd, in_fd, count
        );
    }
    enter(
        Probe::DoSendfile,
        0,
        count,
        None,
        Some((out_fd, in_fd)),
        &TOP_LEVEL,
    );
    0
}

#[kretprobe]
pub fn do_sendfile_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx, Probe::DoSendfile, long_ret(&ctx));
    0
}

// ---- kprobes: kernel TLS ----

/// `int f(struct sock *sk, struct msghdr *msg, size_t size)`
#[inline(always)]
fn enter_sendmsg(ctx: &ProbeContext, probe: Probe, parents: &[Probe]) {
    let sk = arg_u64(ctx, 0);
    let flags = msg_flags(arg_u64(ctx, 1));
    enter(probe, sk, arg_u64(ctx, 2), flags, None, parents);
}

/// The first bytes a `sendmsg` carries, when they come from user memory (ITER_UBUF for a
/// single-buffer write/send, ITER_IOVEC for writev/sendmsg). Kernel-internal sends (pages,
/// kvecs) are left out.
#[inline(always)]
fn payload_head(msg: u64) -> Option<[u8; HEAD_LEN]> {
    let (iter_off, type_off) = (MSGHDR_ITER_OFF.load(), ITER_TYPE_OFF.load());
    if msg == 0 || iter_off == OFF_UNKNOWN || type_off == OFF_UNKNOWN {
        return None;
    }
    let iter = msg + iter_off as u64;
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    let ty = unsafe { bpf_probe_read_kernel((iter + type_off as u64) as *const u8) }.ok()? as u32;
    let user_ptr = if ty == ITER_UBUF_VAL.load() && ITER_UBUF_OFF.load() != OFF_UNKNOWN {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel((iter + ITER_UBUF_OFF.load() as u64) as *const u64) }.ok()?
    } else if ty == ITER_IOVEC_VAL.load() && ITER_IOV_OFF.load() != OFF_UNKNOWN {
        // SAFETY: as above; iov_base is the first member of struct iovec.
        let iov =
            unsafe { bpf_probe_read_kernel((iter + ITER_IOV_OFF.load() as u64) as *const u64) }
                .ok()?;
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(iov as *const u64) }.ok()?
    } else {
        return None;
    };
    let mut head = [0u8; HEAD_LEN];
    // SAFETY: bpf_probe_read_user checks the user address and fails cleanly (e.g. on a
    // page that is not resident: then the head is simply unknown).
    unsafe { bpf_probe_read_user_buf(user_ptr as *const u8, &mut head) }.ok()?;
    Some(head)
}

/// `int f(struct sock *sk, struct page *page, int offset, size_t size, int flags)`
#[inline(always)]
fn enter_sendpage(ctx: &ProbeContext, probe: Probe, parents: &[Probe]) {
    let sk = arg_u64(ctx, 0);
    let flags = arg_u64(ctx, 4) as u32;
    enter(probe, sk, arg_u64(ctx, 3), Some(flags), None, parents);
}

/// Return value of a function declared `int`: only the low 32 bits of the register are
/// defined by the x86-64 ABI.
#[inline(always)]
fn int_ret(ctx: &RetProbeContext) -> Option<i64> {
    let r: u64 = ctx.ret();
    Some(r as u32 as i32 as i64)
}

/// Return value of a function declared `ssize_t` / `long`.
#[inline(always)]
fn long_ret(ctx: &RetProbeContext) -> Option<i64> {
    Some(ctx.ret())
}

/// A kprobe + kretprobe pair: the entry runs `$enter(&ctx, probe, &parents)`, the return
/// reads the return value with `$ret`. The function names are the program names
/// userspace attaches (plan.rs).
macro_rules! probe_pair {
    ($entry:ident, $exit:ident, $probe:expr, $enter:ident, $parents:ident, $ret:ident) => {
        #[kprobe]
        pub fn $entry(ctx: ProbeContext) -> u32 {
            $enter(&ctx, $probe, &$parents);
            0
        }

        #[kretprobe]
        pub fn $exit(ctx: RetProbeContext) -> u32 {
            leave(&ctx, $probe, $ret(&ctx));
            0
        }
    };
}

probe_pair!(
    tls_sw_sendmsg_entry,
    tls_sw_sendmsg_ret,
    Probe::TlsSwSendmsg,
    enter_sendmsg,
    UNDER_SENDFILE,
    int_ret
);

probe_pair!(
    tls_sw_sendpage_entry,
    tls_sw_sendpage_ret,
    Probe::TlsSwSendpage,
    enter_sendpage,
    UNDER_SENDFILE,
    int_ret
);

#[kprobe]
pub fn tls_sw_splice_eof_entry(ctx: ProbeContext) -> u32 {
    // void tls_sw_splice_eof(struct socket *sock)
    let sock = arg_u64(&ctx, 0);
    let off = SOCKET_SK_OFF.load();
    let sk = if off == OFF_UNKNOWN || sock == 0 {
        0
    } else {
        // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
        unsafe { bpf_probe_read_kernel((sock + off as u64) as *const u64) }.unwrap_or(0)
    };
    enter(Probe::TlsSwSpliceEof, sk, 0, None, None, &UNDER_SENDFILE);
    0
}

#[kretprobe]
pub fn tls_sw_splice_eof_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx, Probe::TlsSwSpliceEof, None);
    0
}

probe_pair!(
    tls_device_sendmsg_entry,
    tls_device_sendmsg_ret,
    Probe::TlsDeviceSendmsg,
    enter_sendmsg,
    UNDER_SENDFILE,
    int_ret
);

probe_pair!(
    tls_device_sendpage_entry,
    tls_device_sendpage_ret,
    Probe::TlsDeviceSendpage,
    enter_sendpage,
    UNDER_SENDFILE,
    int_ret
);

#[kprobe]
pub fn tls_push_record_entry(ctx: ProbeContext) -> u32 {
    // static int tls_push_record(struct sock *sk, int flags, unsigned char record_type)
    let sk = arg_u64(&ctx, 0);
    let flags = arg_u64(&ctx, 1) as u32;
    enter(
        Probe::TlsPushRecord,
        sk,
        0,
        Some(flags),
        None,
        &UNDER_TLS_SEND,
    );
    0
}

#[kretprobe]
pub fn tls_push_record_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx, Probe::TlsPushRecord, int_ret(&ctx));
    0
}

// ---- kprobes: TCP ----

#[kprobe]
pub fn tcp_sendmsg_entry(ctx: ProbeContext) -> u32 {
    // int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size): the socket-level
    // send of user data; its first bytes tell user-space TLS from plain data.
    let sk = arg_u64(&ctx, 0);
    let msg = arg_u64(&ctx, 1);
    let head = payload_head(msg);
    enter_with_head(
        Probe::TcpSendmsg,
        sk,
        arg_u64(&ctx, 2),
        msg_flags(msg),
        None,
        &UNDER_SENDFILE,
        head,
    );
    0
}

#[kretprobe]
pub fn tcp_sendmsg_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx, Probe::TcpSendmsg, int_ret(&ctx));
    0
}

probe_pair!(
    tcp_sendmsg_locked_entry,
    tcp_sendmsg_locked_ret,
    Probe::TcpSendmsgLocked,
    enter_sendmsg,
    UNDER_TLS,
    int_ret
);

probe_pair!(
    do_tcp_sendpages_entry,
    do_tcp_sendpages_ret,
    Probe::DoTcpSendpages,
    enter_sendpage,
    UNDER_TLS,
    long_ret
);

// ---- tracepoints: the fallback for kernels without kprobes ----

// The syscall tracepoint records are fixed by the syscall ABI: after the 8-byte common
// header and `__syscall_nr` (padded to 16), every argument takes an 8-byte slot.
const SYS_ARG0: usize = 16;
const SYS_ARG1: usize = 24;
const SYS_ARG3: usize = 40;
const SYS_RET: usize = 16;

#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets inside the syscalls:sys_enter_sendfile64 record (see above).
    let (out_fd, in_fd, count) = unsafe {
        (
            ctx.read_at::<u64>(SYS_ARG0).unwrap_or(0) as i32,
            ctx.read_at::<u64>(SYS_ARG1).unwrap_or(0) as i32,
            ctx.read_at::<u64>(SYS_ARG3).unwrap_or(0),
        )
    };
    enter(
        Probe::Sendfile64,
        0,
        count,
        None,
        Some((out_fd, in_fd)),
        &TOP_LEVEL,
    );
    0
}

#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the syscalls:sys_exit_sendfile64 record (see above).
    let ret = unsafe { ctx.read_at::<i64>(SYS_RET) }.unwrap_or(0);
    leave(&ctx, Probe::Sendfile64, Some(ret));
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let (sk_off, ret_off, proto_off) = (
        TP_SSL_SK_OFF.load(),
        TP_SSL_RET_OFF.load(),
        TP_SSL_PROTO_OFF.load(),
    );
    if sk_off == OFF_UNKNOWN || ret_off == OFF_UNKNOWN || proto_off == OFF_UNKNOWN {
        return 0;
    }
    // SAFETY: offsets come from this tracepoint's format file on the running kernel.
    let (sk, ret, proto) = unsafe {
        (
            ctx.read_at::<u64>(sk_off as usize).unwrap_or(0),
            ctx.read_at::<i32>(ret_off as usize).unwrap_or(0),
            ctx.read_at::<u16>(proto_off as usize).unwrap_or(0),
        )
    };
    if proto != IPPROTO_TCP {
        return 0;
    }
    let (tid, tgid) = tid_tgid();
    if !wanted(tgid, sk) {
        return 0;
    }
    let (parent, root) = nesting(tid, &UNDER_SENDFILE64);
    let id = sock_id(sk, SOCK_KEY.load());
    remember_socket(id, sk, tgid);
    // The tracepoint fires after sendmsg returned: `ret` is what it accepted.
    let done = if ret > 0 { ret as u64 } else { 0 };
    emit(
        &ctx,
        Event {
            ts_ns: now(),
            latency_ns: 0,
            bytes: done,
            ret: ret as i64,
            sock: id,
            pid: tgid,
            tid,
            flags: 0,
            fd_out: 0,
            fd_in: 0,
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
