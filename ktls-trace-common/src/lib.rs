//! The event layout shared by the eBPF programs (`ktls-trace-ebpf`) and userspace
//! (`ktls-trace`). Everything here is `#![no_std]`, `#[repr(C)]` and free of pointers, so
//! the bytes an eBPF program writes into the ring buffer are the bytes userspace decodes.
//!
//! One [`Event`] is emitted per *completed* call of a probed kernel function (at its
//! kretprobe) or syscall (at its exit tracepoint): the entry side stores the arguments in
//! a per-thread map, the return side adds return value and latency and emits one record.
#![no_std]

/// Length of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Number of payload bytes copied from the start of what a call sends (reserved for
/// telling TLS records from plain data; zero-filled when not read).
pub const HEAD_LEN: usize = 8;

/// The places ktls-trace can observe. The discriminant is what travels in
/// [`Event::probe`] and [`Event::parent`]; [`Probe::name`] is what users see.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    /// `do_sendfile()`: the kernel side of sendfile(2) (kprobe + kretprobe).
    DoSendfile = 0,
    /// `tls_sw_sendmsg()`: plaintext handed to software kTLS (all kernels; on 6.5+ also
    /// the sendfile/splice path, marked with `MSG_SPLICE_PAGES`).
    TlsSwSendmsg = 1,
    /// `tls_sw_sendpage()`: the sendfile/splice path into software kTLS before 6.5.
    TlsSwSendpage = 2,
    /// `tls_sw_splice_eof()`: flushes the open record at the end of a splice.
    TlsSwSpliceEof = 3,
    /// `tls_device_sendmsg()`: NIC offload (TLS_HW).
    TlsDeviceSendmsg = 4,
    /// `tls_device_sendpage()`: NIC offload before 6.5.
    TlsDeviceSendpage = 5,
    /// `tcp_sendmsg()`: the socket-level TCP send used by plain and user-space TLS traffic.
    TcpSendmsg = 6,
    /// `tcp_sendmsg_locked()`: where kTLS pushes ciphertext on 6.5+.
    TcpSendmsgLocked = 7,
    /// `do_tcp_sendpages()`: where kTLS pushes ciphertext before 6.5.
    DoTcpSendpages = 8,
    /// `syscalls:sys_enter_sendfile64` / `sys_exit_sendfile64` (tracepoint fallback).
    Sendfile64 = 9,
    /// `sock:sock_send_length` (tracepoint fallback: bytes a socket's sendmsg accepted).
    SockSendLength = 10,
    /// `tls_push_record()`: software kTLS encrypts one record and pushes it (static in
    /// net/tls/tls_sw.c but not inlined in the tested kernels): one event per record.
    TlsPushRecord = 11,
}

impl Probe {
    /// Every probe, in discriminant order.
    pub const ALL: [Probe; 12] = [
        Probe::DoSendfile,
        Probe::TlsSwSendmsg,
        Probe::TlsSwSendpage,
        Probe::TlsSwSpliceEof,
        Probe::TlsDeviceSendmsg,
        Probe::TlsDeviceSendpage,
        Probe::TcpSendmsg,
        Probe::TcpSendmsgLocked,
        Probe::DoTcpSendpages,
        Probe::Sendfile64,
        Probe::SockSendLength,
        Probe::TlsPushRecord,
    ];

    /// The wire value for "no probe" in [`Event::parent`] / [`Event::root`].
    pub const NONE: u8 = 0xff;

    /// Decodes a wire value.
    pub const fn from_u8(v: u8) -> Option<Probe> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// The kernel function or tracepoint name, as attached.
    pub const fn name(self) -> &'static str {
        match self {
            Probe::DoSendfile => "do_sendfile",
            Probe::TlsSwSendmsg => "tls_sw_sendmsg",
            Probe::TlsSwSendpage => "tls_sw_sendpage",
            Probe::TlsSwSpliceEof => "tls_sw_splice_eof",
            Probe::TlsDeviceSendmsg => "tls_device_sendmsg",
            Probe::TlsDeviceSendpage => "tls_device_sendpage",
            Probe::TcpSendmsg => "tcp_sendmsg",
            Probe::TcpSendmsgLocked => "tcp_sendmsg_locked",
            Probe::DoTcpSendpages => "do_tcp_sendpages",
            Probe::Sendfile64 => "sendfile64",
            Probe::SockSendLength => "sock_send_length",
            Probe::TlsPushRecord => "tls_push_record",
        }
    }
}

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
    /// A [`Probe`] discriminant.
    pub probe: u8,
    /// The innermost probed call this one ran inside, or [`Probe::NONE`].
    pub parent: u8,
    /// The outermost probed call this one ran inside, or [`Probe::NONE`].
    pub root: u8,
    /// Bit set of [`has`] flags.
    pub has: u8,
    /// The task's command name, NUL-padded.
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
    pub flags: u32,
    pub fd_out: i32,
    pub fd_in: i32,
    pub parent: u8,
    pub root: u8,
    pub has: u8,
    pub _pad: u8,
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
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// Names of the maps and globals both sides refer to.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const PIDS: &str = "PIDS";
    pub const SOCKS: &str = "SOCKS";
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    pub const FILTER_COMM: &str = "FILTER_COMM";
    pub const COMM: &str = "COMM";
    pub const MSGHDR_FLAGS_OFF: &str = "MSGHDR_FLAGS_OFF";
    pub const SOCKET_SK_OFF: &str = "SOCKET_SK_OFF";
    pub const SOCK_KEY: &str = "SOCK_KEY";
    pub const DEBUG: &str = "DEBUG";
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    pub const TP_SSL_SK_OFF: &str = "TP_SSL_SK_OFF";
    pub const TP_SSL_RET_OFF: &str = "TP_SSL_RET_OFF";
    pub const TP_SSL_PROTO_OFF: &str = "TP_SSL_PROTO_OFF";
    pub const MSGHDR_ITER_OFF: &str = "MSGHDR_ITER_OFF";
    pub const ITER_TYPE_OFF: &str = "ITER_TYPE_OFF";
    pub const ITER_UBUF_OFF: &str = "ITER_UBUF_OFF";
    pub const ITER_IOV_OFF: &str = "ITER_IOV_OFF";
    pub const ITER_UBUF_VAL: &str = "ITER_UBUF_VAL";
    pub const ITER_IOVEC_VAL: &str = "ITER_IOVEC_VAL";
    pub const SOCKINFO: &str = "SOCKINFO";
    pub const SKC_FAMILY_OFF: &str = "SKC_FAMILY_OFF";
    pub const SKC_NUM_OFF: &str = "SKC_NUM_OFF";
    pub const SKC_DPORT_OFF: &str = "SKC_DPORT_OFF";
    pub const SKC_DADDR_OFF: &str = "SKC_DADDR_OFF";
    pub const SKC_RCV_SADDR_OFF: &str = "SKC_RCV_SADDR_OFF";
    pub const SKC_V6_DADDR_OFF: &str = "SKC_V6_DADDR_OFF";
    pub const SKC_V6_RCV_SADDR_OFF: &str = "SKC_V6_RCV_SADDR_OFF";
}

/// Value of an offset global that is not known for the running kernel.
pub const OFF_UNKNOWN: u32 = u32::MAX;

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

// Layout checks: no padding, so every byte pattern is a valid Event.
const _: () = assert!(EVENT_SIZE == 88);
const _: () = assert!(core::mem::size_of::<Active>() == 48);
const _: () = assert!(core::mem::size_of::<SockInfo>() == 44);
