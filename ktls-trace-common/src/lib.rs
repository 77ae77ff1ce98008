//! The contract between the eBPF programs (`ktls-trace-ebpf`) and userspace (`ktls-trace`).
//! Everything here is `#![no_std]`, `#[repr(C)]` and free of pointers, so the bytes an eBPF
//! program writes are the bytes userspace reads:
//!
//! - [`probes`]: every probe, declared once (kernel function or tracepoint, program names,
//!   which kernels have it, what it tells);
//! - [`Event`]: one completed call, the only record in the ring buffer;
//! - [`Config`]: the one load-time global (filters, keys, struct offsets from BTF);
//! - [`TlsLayout`]: where kernel TLS keeps a socket's version, cipher and record sequence
//!   number (from the `tls` module's BTF, known only once the module is loaded, so it is a
//!   map value rather than part of [`Config`]).
//!
//! One [`Event`] is emitted per *completed* call of a probed kernel function (at its
//! kretprobe) or syscall (at its exit tracepoint): the entry side stores the arguments in
//! a per-thread map, the return side adds return value and latency and emits one record.
#![no_std]

pub mod probes;

pub use probes::{Probe, ProbeSpec};

/// Length of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Number of payload bytes copied from the start of what a call sends (to tell TLS
/// records from plain data; zero-filled when not read).
pub const HEAD_LEN: usize = 8;

/// Bits of [`Event::has`]: which optional fields carry a value.
pub mod has {
    /// `ret` is the function's return value.
    pub const RET: u8 = 1 << 0;
    /// `latency_ns` is entry-to-return time.
    pub const LATENCY: u8 = 1 << 1;
    /// `sock` identifies the socket.
    pub const SOCK: u8 = 1 << 2;
    /// `flags` holds the call's MSG_* flags.
    pub const FLAGS: u8 = 1 << 3;
    /// `fd_out` / `fd_in` hold sendfile's file descriptors.
    pub const FDS: u8 = 1 << 4;
    /// `head` holds the first bytes of the payload.
    pub const HEAD: u8 = 1 << 5;
    /// `tls_version` / `tls_cipher` are the kernel TLS socket's.
    pub const TLS: u8 = 1 << 6;
    /// `records` is the number of TLS records the call closed (record sequence number
    /// after the call minus before it).
    pub const RECORDS: u8 = 1 << 7;
}

/// `MSG_*` flag values of `include/linux/socket.h` that ktls-trace names.
pub mod msg {
    pub const MSG_OOB: u32 = 0x1;
    pub const MSG_DONTWAIT: u32 = 0x40;
    pub const MSG_EOR: u32 = 0x80;
    pub const MSG_NOSIGNAL: u32 = 0x4000;
    pub const MSG_MORE: u32 = 0x8000;
    /// `MSG_SENDPAGE_NOTLAST` (before 6.5): more pages of the same splice follow.
    pub const MSG_SENDPAGE_NOTLAST: u32 = 0x20000;
    pub const MSG_ZEROCOPY: u32 = 0x4000000;
    /// `MSG_SPLICE_PAGES` (6.5+, commit b848b26c6672): the pages are spliced, not copied.
    pub const MSG_SPLICE_PAGES: u32 = 0x8000000;
}

/// One completed call, as written by the eBPF programs into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the call returned.
    pub ts_ns: u64,
    /// Entry to return, when `has::LATENCY`.
    pub latency_ns: u64,
    /// Bytes the caller asked to send (the `size`/`count` argument).
    pub bytes: u64,
    /// The return value, when `has::RET` (bytes done, or a negative errno).
    pub ret: i64,
    /// Socket id (a keyed hash of the `struct sock` address), when `has::SOCK`.
    pub sock: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// MSG_* flags, when `has::FLAGS`.
    pub flags: u32,
    /// sendfile's output fd, when `has::FDS`.
    pub fd_out: i32,
    /// sendfile's input fd, when `has::FDS`.
    pub fd_in: i32,
    /// TLS records this call closed, when `has::RECORDS`.
    pub records: u32,
    /// The socket's TLS version (0x0303, 0x0304), when `has::TLS`.
    pub tls_version: u16,
    /// The socket's `TLS_CIPHER_*` (51 = AES-GCM-128, ...), when `has::TLS`.
    pub tls_cipher: u16,
    /// A [`Probe`] discriminant.
    pub probe: u8,
    /// The innermost probed call this one ran inside, or [`Probe::NONE`].
    pub parent: u8,
    /// The outermost probed call this one ran inside, or [`Probe::NONE`].
    pub root: u8,
    /// Bit set of [`has`] flags.
    pub has: u8,
    /// The thread's command name, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// First payload bytes, when `has::HEAD`.
    pub head: [u8; HEAD_LEN],
}

/// Size of [`Event`] on the wire; userspace rejects records of any other size.
pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();

/// Arguments of a call in flight, kept by the entry probe until the return probe runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Active {
    pub ts_ns: u64,
    pub bytes: u64,
    pub sock: u64,
    /// Address of the socket's kernel TLS context (0: none read).
    pub tls_ctx: u64,
    /// Record sequence number at entry (valid with `has::RECORDS`).
    pub rec_seq: u64,
    pub flags: u32,
    pub fd_out: i32,
    pub fd_in: i32,
    pub tls_version: u16,
    pub tls_cipher: u16,
    pub parent: u8,
    pub root: u8,
    pub has: u8,
    pub _pad: [u8; 5],
    pub head: [u8; HEAD_LEN],
}

/// Addresses of a socket, read once from `struct sock_common` and kept in the `SOCKINFO`
/// map under the socket id (userspace reads it for the connection view).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Local port, host byte order (`skc_num`).
    pub sport: u16,
    /// Peer port, network byte order as the kernel keeps it (`skc_dport`).
    pub dport_be: u16,
    pub _pad: u16,
    /// Owner process (tgid) that first used the socket in a traced call.
    pub owner: u32,
    /// Local and peer address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Value of an offset that is not known for the running kernel.
pub const OFF_UNKNOWN: u32 = u32::MAX;

/// Byte offsets of the kernel struct members the programs read, from the running kernel's
/// BTF ([`OFF_UNKNOWN`] when a member does not exist there: the program then leaves the
/// field out rather than read the wrong bytes). Rust eBPF has no CO-RE (aya-rs/aya#349).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `struct msghdr`: `msg_flags`, `msg_iter`.
    pub msghdr_flags: u32,
    pub msghdr_iter: u32,
    /// `struct iov_iter`: `iter_type` (a u8; before 5.14 the u32 `type`, see
    /// `iter_type_old`), `ubuf` (6.0+), `__iov` (`iov` before 6.4).
    pub iter_type: u32,
    /// Non-zero: `iter_type` is the pre-5.14 `unsigned int type`, whose bit 0 is the
    /// direction and whose other bits are the ITER_* value.
    pub iter_type_old: u32,
    pub iter_ubuf: u32,
    pub iter_iov: u32,
    /// Values of `ITER_UBUF` and `ITER_IOVEC` (the enum was reordered in 6.4).
    pub iter_ubuf_val: u32,
    pub iter_iovec_val: u32,
    /// `struct socket`: `sk`.
    pub socket_sk: u32,
    /// `struct sock_common` fields for [`SockInfo`].
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `struct task_struct`: `group_leader`, `comm` (for `--comm` matching the process).
    pub task_group_leader: u32,
    pub task_comm: u32,
    /// `sock:sock_send_length` tracepoint record: `sk`, `ret`, `protocol` (format file).
    pub tp_ssl_sk: u32,
    pub tp_ssl_ret: u32,
    pub tp_ssl_proto: u32,
    pub _reserved: u32,
}

impl Offsets {
    pub const UNKNOWN: Offsets = Offsets {
        msghdr_flags: OFF_UNKNOWN,
        msghdr_iter: OFF_UNKNOWN,
        iter_type: OFF_UNKNOWN,
        iter_type_old: 0,
        iter_ubuf: OFF_UNKNOWN,
        iter_iov: OFF_UNKNOWN,
        iter_ubuf_val: OFF_UNKNOWN,
        iter_iovec_val: OFF_UNKNOWN,
        socket_sk: OFF_UNKNOWN,
        skc_family: OFF_UNKNOWN,
        skc_num: OFF_UNKNOWN,
        skc_dport: OFF_UNKNOWN,
        skc_daddr: OFF_UNKNOWN,
        skc_rcv_saddr: OFF_UNKNOWN,
        skc_v6_daddr: OFF_UNKNOWN,
        skc_v6_rcv_saddr: OFF_UNKNOWN,
        task_group_leader: OFF_UNKNOWN,
        task_comm: OFF_UNKNOWN,
        tp_ssl_sk: OFF_UNKNOWN,
        tp_ssl_ret: OFF_UNKNOWN,
        tp_ssl_proto: OFF_UNKNOWN,
        _reserved: 0,
    };
}

/// The one load-time global of the eBPF object (symbol [`CONFIG_SYMBOL`]), written by
/// userspace with `EbpfLoader::override_global` before the programs are loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Per-run key for socket ids ([`sock_id`]).
    pub sock_key: u64,
    /// Wake the ring-buffer reader only when this many bytes wait (0: on every event).
    pub wakeup_bytes: u64,
    /// Non-zero: only processes in `PIDS` (and sockets in `SOCKS`) are traced.
    pub filter_pids: u8,
    /// Non-zero: only tasks whose thread or process name equals `comm` are traced.
    pub filter_comm: u8,
    /// Non-zero: emit aya-log debug records.
    pub debug: u8,
    /// The [`Probe`] that marks "inside sendfile(2)": `DoSendfile`, or `Sendfile64` where
    /// the kernel has no `do_sendfile` symbol (or no kprobes).
    pub sendfile_probe: u8,
    /// Non-zero: completed calls are added to the `AGG` and `LAT` maps ([`AggKey`]) instead
    /// of being sent as events (`top` and the exporter read totals, not calls).
    pub aggregate: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; COMM_LEN],
    pub off: Offsets,
}

/// The symbol name of [`Config`] in the eBPF object.
pub const CONFIG_SYMBOL: &str = "CONFIG";

impl Config {
    pub const DEFAULT: Config = Config {
        sock_key: 0,
        wakeup_bytes: 0,
        filter_pids: 0,
        filter_comm: 0,
        debug: 0,
        sendfile_probe: Probe::DoSendfile as u8,
        aggregate: 0,
        _pad: [0; 3],
        comm: [0; COMM_LEN],
        off: Offsets::UNKNOWN,
    };
}

/// Where kernel TLS keeps its per-socket state, from the BTF of the `tls` module (or of
/// vmlinux where TLS is built in): `tls_get_ctx(sk)` is `inet_csk(sk)->icsk_ulp_data`, and
/// `struct tls_context` holds `prot_info.version`, `prot_info.cipher_type` and the transmit
/// record sequence number `tx.rec_seq` (8 bytes, big endian: a `char *` to them in older
/// kernels, an array inside `struct cipher_context` in newer ones; the BTF says which).
/// The sequence number advances by one for every record encrypted, wherever that happens
/// (tls_push_record is static and inlined in 7.2+), so its change across a kTLS send call is
/// the number of records that call closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsLayout {
    /// Non-zero once the offsets below are filled in.
    pub valid: u32,
    /// `struct inet_connection_sock`: `icsk_ulp_data`.
    pub icsk_ulp_data: u32,
    /// `struct tls_context`: `prot_info.version`, `prot_info.cipher_type`.
    pub version: u32,
    pub cipher: u32,
    /// `struct tls_context`: `tx.rec_seq`.
    pub tx_rec_seq: u32,
    /// Non-zero: `tx.rec_seq` is a pointer to the bytes (older kernels).
    pub rec_seq_is_ptr: u32,
}

impl TlsLayout {
    pub const UNKNOWN: TlsLayout = TlsLayout {
        valid: 0,
        icsk_ulp_data: OFF_UNKNOWN,
        version: OFF_UNKNOWN,
        cipher: OFF_UNKNOWN,
        tx_rec_seq: OFF_UNKNOWN,
        rec_seq_is_ptr: 0,
    };
}

/// Key of a call in flight: thread id in the high bits, probe in the low byte.
#[inline(always)]
pub const fn active_key(tid: u32, probe: Probe) -> u64 {
    ((tid as u64) << 8) | probe as u64
}

/// Indexes of the per-CPU `STATS` counters.
pub mod stat {
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Calls not followed because the in-flight map was full.
    pub const ACTIVE_FULL: u32 = 1;
    /// Calls whose return probe never ran, one counter per probe from here
    /// (`RETURN_MISSED + probe id`). A kretprobe has a fixed number of instances,
    /// `maxactive`: more threads than that inside one function at once lose their
    /// returns. Seen when the same thread enters the same function again and finds its
    /// previous call still in flight.
    pub const RETURN_MISSED: u32 = 2;
    /// Calls not counted because the `AGG` (or `LAT`) map was full (aggregate mode).
    pub const AGG_FULL: u32 = RETURN_MISSED + crate::Probe::ALL.len() as u32;
    /// Number of counters.
    pub const COUNT: u32 = AGG_FULL + 1;
}

/// Names of the maps both sides refer to.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const PIDS: &str = "PIDS";
    pub const SOCKINFO: &str = "SOCKINFO";
    pub const PROCS: &str = "PROCS";
    pub const TLS_LAYOUT: &str = "TLS_LAYOUT";
    pub const AGG: &str = "AGG";
    pub const LAT: &str = "LAT";
    pub const AGG_GEN: &str = "AGG_GEN";
}

/// A TLS record sequence number moves by at most this much in one call; a bigger change
/// is a key update (the number restarts at 0) and is not a record count.
pub const MAX_RECORDS_PER_CALL: u64 = 1 << 20;

/// Mixes a kernel address with a per-run key into a socket id, so that traces do not
/// publish kernel pointers while one socket keeps one id for the whole run.
#[inline(always)]
pub const fn sock_id(addr: u64, key: u64) -> u64 {
    // splitmix64 finaliser: a bijection, so distinct sockets never collide.
    let mut z = addr ^ key;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a completed call was, as far as classification cares: the bits of [`AggKey::facts`].
/// Both sides compute them with [`facts::of`], the eBPF programs for the in-kernel
/// aggregates and userspace for events, so the classifier reads the same facts either way.
pub mod facts {
    use crate::{HEAD_LEN, has, msg};

    /// The call's return value is known (`has::RET`).
    pub const RET: u8 = 1 << 0;
    /// The call's MSG_* flags are known.
    pub const FLAGS: u8 = 1 << 1;
    /// The flags carry `MSG_SPLICE_PAGES`: pages spliced, not copied (6.5+).
    pub const SPLICE: u8 = 1 << 2;
    /// The first payload bytes are those of a TLS record (user-space TLS).
    pub const TLS_HEAD: u8 = 1 << 3;
    /// Asked to send 2 bytes and sent 2: the size of an alert record's plaintext.
    pub const TWO_BYTES: u8 = 1 << 4;
    /// The socket's TLS version and cipher are known (`has::TLS`).
    pub const TLS: u8 = 1 << 5;
    /// The TLS records the call closed are known (`has::RECORDS`).
    pub const RECORDS: u8 = 1 << 6;
    /// The socket is known (`has::SOCK`).
    pub const SOCK: u8 = 1 << 7;

    /// Largest length a TLS record header may announce: 2^14 plaintext plus the TLS 1.2
    /// allowance of 2048 bytes of expansion (RFC 5246 6.2.3; TLS 1.3 allows 256).
    pub const TLS_MAX_RECORD_LEN: u16 = (1 << 14) + 2048;

    /// Do these first payload bytes start a TLS record? Content type 0x17 (application
    /// data), 0x15 (alert) or 0x16 (handshake), legacy version 0x0303 (0x0301 is also
    /// accepted for handshakes: ClientHello records), and a length a record can have.
    #[inline(always)]
    pub fn looks_like_tls_record(head: &[u8; HEAD_LEN]) -> bool {
        let version_ok = match head[0] {
            0x17 | 0x15 => head[1] == 0x03 && head[2] == 0x03,
            0x16 => head[1] == 0x03 && (head[2] == 0x03 || head[2] == 0x01),
            _ => false,
        };
        let len = ((head[3] as u16) << 8) | head[4] as u16;
        version_ok && len > 0 && len <= TLS_MAX_RECORD_LEN
    }

    /// The facts of one call from what the programs know of it (`has` bits and fields of
    /// [`crate::Event`]).
    #[inline(always)]
    pub fn of(has_bits: u8, flags: u32, head: &[u8; HEAD_LEN], bytes: u64, ret: i64) -> u8 {
        let mut f = 0u8;
        if has_bits & has::RET != 0 {
            f |= RET;
        }
        if has_bits & has::FLAGS != 0 {
            f |= FLAGS;
            if flags & msg::MSG_SPLICE_PAGES != 0 {
                f |= SPLICE;
            }
        }
        if has_bits & has::HEAD != 0 && looks_like_tls_record(head) {
            f |= TLS_HEAD;
        }
        if bytes == 2 && has_bits & has::RET != 0 && ret == 2 {
            f |= TWO_BYTES;
        }
        if has_bits & has::TLS != 0 {
            f |= TLS;
        }
        if has_bits & has::RECORDS != 0 {
            f |= RECORDS;
        }
        if has_bits & has::SOCK != 0 {
            f |= SOCK;
        }
        f
    }
}

/// Key of the in-kernel aggregate `AGG` (aggregate mode): every completed call with the
/// same key adds to one [`AggVal`]. The key holds what the classifier needs to decide
/// what the bytes were ([`facts`], nesting, socket) and whom they count for (process,
/// thread and its name), so userspace classifies a key exactly as it would each of the
/// calls it sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggKey {
    /// Socket id ([`sock_id`]), when `facts::SOCK`.
    pub sock: u64,
    /// Process id (tgid) and thread id.
    pub pid: u32,
    pub tid: u32,
    /// The socket's TLS version and cipher, when `facts::TLS`.
    pub tls_version: u16,
    pub tls_cipher: u16,
    /// A [`Probe`] discriminant; innermost and outermost enclosing probed calls.
    pub probe: u8,
    pub parent: u8,
    pub root: u8,
    /// Bit set of [`facts`].
    pub facts: u8,
    /// The thread's command name, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The generation the key was written in (0 or 1, `AGG_GEN`): userspace switches
    /// the programs to the other one, and clears this one once nothing writes it.
    pub generation: u8,
    /// Zero (hash keys are compared byte for byte: no undefined padding).
    pub _pad: [u8; 7],
}

/// Totals of the calls of one [`AggKey`] (per CPU; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggVal {
    /// Completed calls.
    pub calls: u64,
    /// Bytes asked to send (the `size`/`count` arguments).
    pub bytes: u64,
    /// Bytes sent: the positive return values.
    pub done: u64,
    /// TLS records closed (calls with `facts::RECORDS`).
    pub records: u64,
}

/// Key of the latency histograms `LAT` (aggregate mode): one per process and probe, for
/// the probes whose latency is shown ([`Probe::latency_shown`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LatKey {
    pub pid: u32,
    pub probe: u8,
    /// As [`AggKey::generation`].
    pub generation: u8,
    pub _pad: [u8; 2],
}

/// Number of buckets of a latency histogram: bucket `i > 0` counts latencies in
/// `[2^(i-1), 2^i)` ns, bucket 0 latencies of 0 ns; the last one everything from 2^62 ns
/// up. 64, so that the eBPF programs bound the index with a mask the verifier follows.
pub const LAT_BUCKETS: usize = 64;

/// A latency histogram (per CPU; userspace sums the CPUs): log2 buckets (see
/// [`LAT_BUCKETS`]) and the exact sum, which the buckets cannot give (Prometheus' `_sum`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatHist {
    pub buckets: [u64; LAT_BUCKETS],
    /// The latencies added up, in ns.
    pub sum_ns: u64,
}

impl LatHist {
    pub const ZERO: LatHist = LatHist {
        buckets: [0; LAT_BUCKETS],
        sum_ns: 0,
    };

    /// Counts one latency (what the eBPF programs do in place).
    pub fn add(&mut self, ns: u64) {
        self.buckets[lat_bucket(ns)] += 1;
        self.sum_ns = self.sum_ns.wrapping_add(ns);
    }
}

/// The bucket of a latency (see [`LAT_BUCKETS`]): always below 64, by a mask (2^63 ns
/// and more, 292 years, share the last bucket with 2^62).
#[inline(always)]
pub const fn lat_bucket(ns: u64) -> usize {
    let b = 64 - ns.leading_zeros() as usize;
    let b = if b > LAT_BUCKETS - 1 {
        LAT_BUCKETS - 1
    } else {
        b
    };
    b & (LAT_BUCKETS - 1)
}

// Layout checks: no padding, so every byte pattern is a valid value.
const _: () = assert!(EVENT_SIZE == 96);
const _: () = assert!(core::mem::size_of::<Active>() == 72);
const _: () = assert!(core::mem::size_of::<LatHist>() == 8 * LAT_BUCKETS + 8);
const _: () = assert!(core::mem::size_of::<SockInfo>() == 44);
const _: () = assert!(core::mem::size_of::<Offsets>() == 88);
const _: () = assert!(core::mem::size_of::<Config>() == 128);
const _: () = assert!(core::mem::size_of::<TlsLayout>() == 24);
const _: () = assert!(core::mem::size_of::<AggKey>() == 48);
const _: () = assert!(core::mem::size_of::<AggVal>() == 32);
const _: () = assert!(core::mem::size_of::<LatKey>() == 8);
