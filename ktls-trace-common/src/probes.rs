//! Every probe ktls-trace knows, declared once. The eBPF object defines one program pair
//! per entry (named after the hook, see [`Hook`]), userspace attaches them from this table,
//! the attach plan reads which kernels have them from it, and `doctor` and the docs say
//! what each one tells from it.
//!
//! Adding a probe: a [`Probe`] variant, one [`PROBES`] entry in the same position, and its
//! programs in `ktls-trace-ebpf` (a userspace test checks the object has exactly the
//! programs this table names).

/// A kernel version, major and minor.
pub type Version = (u32, u32);

/// 6.5 removed `->sendpage` (commit dc97391e6610 "sock: Remove ->sendpage*() in favour of
/// sendmsg(MSG_SPLICE_PAGES)"): the kTLS entry and TCP push functions changed.
pub const SENDPAGE_REMOVED: Version = (6, 5);

/// The places ktls-trace can observe. The discriminant is what travels in
/// [`crate::Event::probe`] and [`crate::Event::parent`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    DoSendfile = 0,
    TlsSwSendmsg = 1,
    TlsSwSendpage = 2,
    TlsSwSpliceEof = 3,
    TlsDeviceSendmsg = 4,
    TlsDeviceSendpage = 5,
    TcpSendmsg = 6,
    TcpSendmsgLocked = 7,
    DoTcpSendpages = 8,
    Sendfile64 = 9,
    SockSendLength = 10,
}

/// How a probe is hooked into the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// kprobe + kretprobe on a kernel function; programs `<function>_entry` and
    /// `<function>_ret`.
    Kfunc(&'static str),
    /// The syscall's enter and exit tracepoints (`syscalls:sys_enter_<name>`,
    /// `syscalls:sys_exit_<name>`); programs named like the tracepoints.
    Syscall(&'static str),
    /// One tracepoint that fires after the fact; the program is named like it.
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
}

/// What a probe stands for in the transmit path. The attach plan picks, per role, the
/// probes this kernel has; the classifier (`ktls-trace/src/classify`) gives them meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A sendfile(2) call: file bytes entering the kernel's send path.
    Sendfile,
    /// Plaintext handed to software kernel TLS.
    KtlsSend,
    /// The end of a splice into kernel TLS: the open record is closed.
    KtlsFlush,
    /// Plaintext handed to NIC-offloaded kernel TLS.
    KtlsDevice,
    /// The socket layer's TCP send (plain and user-space TLS traffic).
    TcpSend,
    /// Where kernel TLS pushes ciphertext into TCP.
    TcpPush,
    /// Bytes a socket's sendmsg accepted (tracepoint mode).
    SockSend,
}

/// One entry of [`PROBES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub probe: Probe,
    pub hook: Hook,
    pub role: Role,
    /// Lives in the `tls` module: absent until it is loaded.
    pub in_tls_module: bool,
    /// First and last-but-one kernel version that has it (None: no bound).
    pub since: Option<Version>,
    pub until: Option<Version>,
    /// Why a kernel in range may still lack it (a config option, a backport).
    pub unless: Option<&'static str>,
    /// A kprobe probe (false: a tracepoint, usable without kprobes).
    pub kprobe: bool,
    /// Also built as a BPF trampoline pair (`<function>_fentry` / `<function>_fexit`) for a
    /// function with this many arguments: the functions of vmlinux. The attach plan uses
    /// it when the kernel's BTF gives the function that many, else the kprobes.
    pub trampoline_args: Option<u8>,
    /// What it tells the user (doctor, docs/kernel-support.md).
    pub tells: &'static str,
}

const fn kfunc(probe: Probe, function: &'static str, role: Role, tells: &'static str) -> ProbeSpec {
    ProbeSpec {
        probe,
        hook: Hook::Kfunc(function),
        role,
        in_tls_module: matches!(role, Role::KtlsSend | Role::KtlsFlush | Role::KtlsDevice),
        since: None,
        until: None,
        unless: None,
        kprobe: true,
        trampoline_args: None,
        tells,
    }
}

const fn trampoline(mut s: ProbeSpec, args: u8) -> ProbeSpec {
    s.trampoline_args = Some(args);
    s
}

const fn until(mut s: ProbeSpec, v: Version) -> ProbeSpec {
    s.until = Some(v);
    s
}

const fn since(mut s: ProbeSpec, v: Version) -> ProbeSpec {
    s.since = Some(v);
    s
}

const fn unless(mut s: ProbeSpec, why: &'static str) -> ProbeSpec {
    s.unless = Some(why);
    s
}

/// Every probe, in [`Probe`] discriminant order.
pub const PROBES: [ProbeSpec; 11] = [
    trampoline(
        kfunc(
            Probe::DoSendfile,
            "do_sendfile",
            Role::Sendfile,
            "file bytes entering sendfile(2)",
        ),
        5,
    ),
    kfunc(
        Probe::TlsSwSendmsg,
        "tls_sw_sendmsg",
        Role::KtlsSend,
        "plaintext into software kTLS: write() path; on 6.5+ also the sendfile path (MSG_SPLICE_PAGES); TLS version, cipher and records closed",
    ),
    until(
        kfunc(
            Probe::TlsSwSendpage,
            "tls_sw_sendpage",
            Role::KtlsSend,
            "plaintext pages spliced into software kTLS by sendfile (before 6.5); records closed",
        ),
        SENDPAGE_REMOVED,
    ),
    unless(
        since(
            kfunc(
                Probe::TlsSwSpliceEof,
                "tls_sw_splice_eof",
                Role::KtlsFlush,
                "end of a splice: the open TLS record is closed",
            ),
            SENDPAGE_REMOVED,
        ),
        "added in 6.5 and backported only to some 6.1 stable releases",
    ),
    unless(
        kfunc(
            Probe::TlsDeviceSendmsg,
            "tls_device_sendmsg",
            Role::KtlsDevice,
            "plaintext into NIC-offloaded kTLS",
        ),
        "needs CONFIG_TLS_DEVICE",
    ),
    unless(
        until(
            kfunc(
                Probe::TlsDeviceSendpage,
                "tls_device_sendpage",
                Role::KtlsDevice,
                "pages into NIC-offloaded kTLS (before 6.5)",
            ),
            SENDPAGE_REMOVED,
        ),
        "needs CONFIG_TLS_DEVICE",
    ),
    trampoline(
        kfunc(
            Probe::TcpSendmsg,
            "tcp_sendmsg",
            Role::TcpSend,
            "socket-level TCP sends: plain and user-space TLS (kTLS bypasses it)",
        ),
        3,
    ),
    trampoline(
        kfunc(
            Probe::TcpSendmsgLocked,
            "tcp_sendmsg_locked",
            Role::TcpPush,
            "where kTLS pushes ciphertext into TCP (6.5+)",
        ),
        3,
    ),
    trampoline(
        until(
            kfunc(
                Probe::DoTcpSendpages,
                "do_tcp_sendpages",
                Role::TcpPush,
                "where kTLS pushes ciphertext into TCP (before 6.5)",
            ),
            SENDPAGE_REMOVED,
        ),
        5,
    ),
    ProbeSpec {
        probe: Probe::Sendfile64,
        hook: Hook::Syscall("sendfile64"),
        role: Role::Sendfile,
        in_tls_module: false,
        since: None,
        until: None,
        unless: Some("needs CONFIG_FTRACE_SYSCALLS"),
        kprobe: false,
        trampoline_args: None,
        tells: "sendfile(2) calls and bytes (tracepoints: without kprobes, or where do_sendfile is not a symbol)",
    },
    ProbeSpec {
        probe: Probe::SockSendLength,
        hook: Hook::Tracepoint {
            category: "sock",
            name: "sock_send_length",
        },
        role: Role::SockSend,
        in_tls_module: false,
        since: Some((6, 3)),
        until: None,
        unless: None,
        kprobe: false,
        trampoline_args: None,
        tells: "bytes each TCP socket's sendmsg accepted (tracepoint mode; plaintext on kTLS sockets)",
    },
];

impl Probe {
    /// Every probe, in discriminant order.
    pub const ALL: [Probe; 11] = [
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
    ];

    /// The wire value for "no probe" in [`crate::Event::parent`] / [`crate::Event::root`].
    pub const NONE: u8 = 0xff;

    /// Decodes a wire value.
    pub const fn from_u8(v: u8) -> Option<Probe> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// Its entry of [`PROBES`].
    pub const fn spec(self) -> &'static ProbeSpec {
        &PROBES[self as usize]
    }

    /// The kernel function, syscall or tracepoint name: what users see.
    pub const fn name(self) -> &'static str {
        match self.spec().hook {
            Hook::Kfunc(f) => f,
            Hook::Syscall(s) => s,
            Hook::Tracepoint { name, .. } => name,
        }
    }

    pub const fn role(self) -> Role {
        self.spec().role
    }

    /// Is the latency of this probe's calls shown (sendfile(2) calls, and the sends into
    /// kernel TLS)? Aggregate mode keeps a histogram only for these. A match on the probe
    /// rather than on [`Probe::role`], so that the eBPF programs need no table lookup; a
    /// test checks the two agree.
    #[inline(always)]
    pub const fn latency_shown(self) -> bool {
        matches!(
            self,
            Probe::DoSendfile
                | Probe::Sendfile64
                | Probe::TlsSwSendmsg
                | Probe::TlsSwSendpage
                | Probe::TlsDeviceSendmsg
                | Probe::TlsDeviceSendpage
        )
    }
}

// The latency rule, by role: sendfile(2) and the sends of plaintext into kernel TLS.
const _: () = {
    let mut i = 0;
    while i < Probe::ALL.len() {
        let p = Probe::ALL[i];
        let by_role = matches!(p.role(), Role::Sendfile | Role::KtlsSend | Role::KtlsDevice);
        assert!(p.latency_shown() == by_role);
        i += 1;
    }
};

// The table is in discriminant order, so `Probe::spec` is an index.
const _: () = {
    let mut i = 0;
    while i < PROBES.len() {
        assert!(PROBES[i].probe as usize == i);
        assert!(Probe::ALL[i] as usize == i);
        i += 1;
    }
};
