//! What happened to the bytes: the one place that turns a traced call (which kernel
//! function ran, its flags, its nesting, its socket, the first payload bytes) into what it
//! contributes — payload on a [`Path`], ciphertext, TLS records, sendfile calls — and to
//! whom. `trace`'s summary, `top`'s model, `verify`'s judge and the benchmarks fold this
//! output; none of them looks at probes to decide what bytes mean.
//!
//! The kernel-era rules live here and nowhere else:
//! - before 6.5 sendfile reaches kernel TLS through `tls_sw_sendpage` and kTLS pushes
//!   ciphertext with `do_tcp_sendpages`; from 6.5 (commit dc97391e6610) through
//!   `tls_sw_sendmsg` with `MSG_SPLICE_PAGES` and `tcp_sendmsg_locked` ([`Role`]s say which
//!   probe plays which part, so both eras read the same here);
//! - records come from the socket's TLS record sequence number, read around every kernel
//!   TLS send (exact on every kernel whose tls module has BTF; no static function such as
//!   `tls_push_record`, inlined in 7.2, is needed);
//! - `tcp_sendmsg` never sees kernel TLS transmit; a TCP push inside a kTLS call, or on a
//!   socket known to be a kTLS socket (the tx worker flushing later), is ciphertext.
//!
//! The rules are written down in docs/top.md ("How paths are decided").

use ktls_trace_common::{Probe, facts, probes::Role};
use serde::Serialize;

use crate::{
    event::{Comm, TraceEvent},
    inthash::IntMap,
    tls::TlsParams,
};

/// The way a process's payload travels to the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    /// Plaintext enters kernel TLS through the splice path (`tls_sw_sendpage`, or
    /// `tls_sw_sendmsg` with `MSG_SPLICE_PAGES`): page cache -> kernel crypto -> TCP.
    KtlsSendfile,
    /// Plaintext enters kernel TLS from a user buffer (`tls_sw_sendmsg` without
    /// `MSG_SPLICE_PAGES`).
    KtlsWrite,
    /// Kernel TLS with NIC offload (`tls_device_sendmsg` / `tls_device_sendpage`).
    KtlsDevice,
    /// TLS records built in user space and written to a plain TCP socket.
    UserspaceTls,
    /// sendfile(2) to a TCP socket without TLS.
    PlainSendfile,
    /// Anything else handed to TCP.
    Plain,
}

impl Path {
    /// Every path, in the order ties are broken (the first wins).
    pub const ALL: [Path; 6] = [
        Path::KtlsSendfile,
        Path::KtlsWrite,
        Path::KtlsDevice,
        Path::UserspaceTls,
        Path::PlainSendfile,
        Path::Plain,
    ];

    /// Index into per-path arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// What the user sees.
    pub const fn label(self) -> &'static str {
        match self {
            Path::KtlsSendfile => "kTLS sendfile (zero-copy)",
            Path::KtlsWrite => "kTLS write",
            Path::KtlsDevice => "kTLS device offload",
            Path::UserspaceTls => "user-space TLS",
            Path::PlainSendfile => "plain sendfile",
            Path::Plain => "plain",
        }
    }

    /// For scripts (JSON keys; the load modes of the same name take these paths).
    pub const fn id(self) -> &'static str {
        match self {
            Path::KtlsSendfile => "ktls-sendfile",
            Path::KtlsWrite => "ktls-write",
            Path::KtlsDevice => "ktls-device",
            Path::UserspaceTls => "userspace-tls",
            Path::PlainSendfile => "plain-sendfile",
            Path::Plain => "plain",
        }
    }

    /// For Prometheus label values (snake_case, as `promtool` and PromQL users expect).
    pub const fn metric_label(self) -> &'static str {
        match self {
            Path::KtlsSendfile => "ktls_sendfile",
            Path::KtlsWrite => "ktls_write",
            Path::KtlsDevice => "ktls_device",
            Path::UserspaceTls => "userspace_tls",
            Path::PlainSendfile => "plain_sendfile",
            Path::Plain => "plain",
        }
    }

    /// Does the payload enter kernel TLS?
    pub const fn is_ktls(self) -> bool {
        matches!(
            self,
            Path::KtlsSendfile | Path::KtlsWrite | Path::KtlsDevice
        )
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl Serialize for Path {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// Bytes per [`Path`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathBytes([u64; Path::ALL.len()]);

impl PathBytes {
    pub fn add(&mut self, path: Path, bytes: u64) {
        self.0[path.index()] += bytes;
    }

    pub fn get(&self, path: Path) -> u64 {
        self.0[path.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Plaintext that entered kernel TLS.
    pub fn ktls(&self) -> u64 {
        Path::ALL
            .iter()
            .filter(|p| p.is_ktls())
            .map(|p| self.get(*p))
            .sum()
    }

    /// The path carrying most bytes (ties: the first in [`Path::ALL`]).
    pub fn main_path(&self) -> Option<Path> {
        let mut best: Option<(Path, u64)> = None;
        for p in Path::ALL {
            let b = self.get(p);
            if b > 0 && best.is_none_or(|(_, bb)| b > bb) {
                best = Some((p, b));
            }
        }
        best.map(|(p, _)| p)
    }

    /// Share of all bytes that went the zero-copy kernel TLS way (None without bytes).
    pub fn zero_copy_share(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.get(Path::KtlsSendfile) as f64 / total as f64)
    }

    pub fn reset(&mut self) {
        self.0 = [0; Path::ALL.len()];
    }
}

impl Serialize for PathBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(Path::ALL.len()))?;
        for p in Path::ALL {
            m.serialize_entry(p.id(), &self.get(p))?;
        }
        m.end()
    }
}

/// A kernel TLS send: its socket and the socket's version and cipher (when read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KtlsSend {
    pub sock: u64,
    pub params: Option<TlsParams>,
    /// On the splice path (sendfile/splice), not from a user buffer.
    pub splice: bool,
}

/// What one event adds, and to whom.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contribution {
    /// The process whose numbers this goes to: the caller, or the owner of the kernel TLS
    /// socket whose records the kernel's tx worker pushed later.
    pub pid: u32,
    pub name: Comm,
    /// Counted for the socket's owner although another task ran it.
    pub on_behalf: bool,
    /// Payload bytes and the path they take.
    pub payload: Option<(Path, u64)>,
    /// TLS control plaintext (alert records: close_notify) written into kernel TLS.
    pub control: u64,
    /// Ciphertext bytes kernel TLS pushed into TCP.
    pub ciphertext: u64,
    /// TLS records kernel TLS closed (None: this kernel does not tell).
    pub records: Option<u64>,
    /// A sendfile(2) call completed and moved this many file bytes.
    pub sendfile: Option<u64>,
    pub sendfile_latency_ns: Option<u64>,
    /// Latency of a kernel TLS send call.
    pub tls_latency_ns: Option<u64>,
    /// The call ran inside a sendfile(2) call.
    pub in_sendfile: bool,
    /// This event is a kernel TLS send.
    pub ktls: Option<KtlsSend>,
    /// How many calls this is: 1 for an event, the count of an in-kernel aggregate.
    pub calls: u64,
}

impl Contribution {
    fn of(e: &TraceEvent) -> Contribution {
        Contribution {
            pid: e.pid,
            name: e.process_name(),
            on_behalf: false,
            payload: None,
            control: 0,
            ciphertext: 0,
            records: None,
            sendfile: None,
            sendfile_latency_ns: None,
            tls_latency_ns: None,
            in_sendfile: in_sendfile(e),
            ktls: None,
            calls: 1,
        }
    }

    /// Adds nothing to anyone's numbers.
    pub fn is_empty(&self) -> bool {
        self.payload.is_none_or(|(_, b)| b == 0)
            && self.control == 0
            && self.ciphertext == 0
            && self.records.is_none_or(|r| r == 0)
            && self.sendfile.is_none()
            && self.tls_latency_ns.is_none()
    }
}

/// Facts of the running trace that change how events count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Tracepoint mode without `sock:sock_send_length` (kernels before 6.3): the bytes
    /// sendfile returns are the only payload figure there is.
    pub sendfile_is_payload: bool,
    /// The TCP pushes are not probed ([`crate::plan::Plan::derive_ciphertext`]): a kernel
    /// TLS send's ciphertext is its plaintext plus its records times the socket's record
    /// overhead.
    pub ciphertext_derived: bool,
}

/// A kernel TLS send of plaintext, a flush of the open record, or a device offload send.
pub fn is_ktls_call(p: Probe) -> bool {
    matches!(
        p.role(),
        Role::KtlsSend | Role::KtlsFlush | Role::KtlsDevice
    )
}

fn in_sendfile(e: &TraceEvent) -> bool {
    [e.parent, e.root]
        .into_iter()
        .flatten()
        .any(|p| p.role() == Role::Sendfile)
}

pub use ktls_trace_common::facts::{TLS_MAX_RECORD_LEN, looks_like_tls_record};

/// An alert record carries exactly two bytes of plaintext (level, description): a 2-byte
/// write into kernel TLS that is not spliced is the close_notify of `shutdown()`
/// (`facts::TWO_BYTES`: asked 2, sent 2).
pub const ALERT_LEN: u64 = 2;

/// A kernel TLS socket seen in a kTLS send.
#[derive(Debug, Clone, Copy)]
struct KtlsSock {
    owner: u32,
    name: Comm,
    params: Option<TlsParams>,
    last_ns: u64,
}

/// Classifies a stream of events. It remembers which sockets are kernel TLS sockets and
/// whose (from their kTLS sends), because the kernel pushes some of their records later
/// from its tx worker, outside any call of the owner.
#[derive(Debug, Default)]
pub struct Classifier {
    rules: Rules,
    socks: IntMap<u64, KtlsSock>,
}

/// A kernel TLS socket is forgotten after this long without events.
pub const SOCK_FORGET_NS: u64 = 300_000_000_000;

impl Classifier {
    pub fn new(rules: Rules) -> Classifier {
        Classifier {
            rules,
            socks: IntMap::default(),
        }
    }

    /// The owner (pid) of a socket known to be a kernel TLS socket.
    pub fn ktls_owner(&self, sock: u64) -> Option<u32> {
        self.socks.get(&sock).map(|s| s.owner)
    }

    /// The version and cipher of a kernel TLS socket, when the kernel told them.
    pub fn ktls_params(&self, sock: u64) -> Option<TlsParams> {
        self.socks.get(&sock).and_then(|s| s.params)
    }

    /// Forgets kernel TLS sockets idle since before `now_ns - SOCK_FORGET_NS`.
    pub fn forget_idle(&mut self, now_ns: u64) {
        self.socks
            .retain(|_, s| now_ns.saturating_sub(s.last_ns) <= SOCK_FORGET_NS);
    }

    /// What one event contributes.
    pub fn classify(&mut self, e: &TraceEvent) -> Contribution {
        // The facts only where a rule reads them (kernel TLS sends, socket-level TCP
        // sends): most events are TCP pushes, which need none, and this is trace's hot path.
        self.classify_with(e, || e.facts(), 1)
    }

    /// What `calls` calls contribute that share `e`'s probe, nesting, socket and process
    /// and the [`facts`] `f` (an in-kernel aggregate: `e` carries their summed bytes and
    /// records). Every rule reads the per-call facts from `f`, never from `e`'s sums.
    pub fn classify_facts(&mut self, e: &TraceEvent, f: u8, calls: u64) -> Contribution {
        self.classify_with(e, || f, calls)
    }

    fn classify_with(
        &mut self,
        e: &TraceEvent,
        facts_of: impl FnOnce() -> u8,
        calls: u64,
    ) -> Contribution {
        let mut c = Contribution::of(e);
        c.calls = calls;
        let done = e.bytes_done();
        let ktls_parent = e.parent.is_some_and(is_ktls_call);
        match e.probe.role() {
            Role::Sendfile => {
                c.sendfile = Some(done);
                c.sendfile_latency_ns = e.latency_ns;
                if self.rules.sendfile_is_payload {
                    c.payload = Some((Path::PlainSendfile, done));
                }
            }
            Role::KtlsSend | Role::KtlsDevice => {
                let f = facts_of();
                // Without the flags (offset unknown on this kernel), a call inside
                // sendfile is the splice path; sendpage is always the splice path.
                let splice = match e.probe {
                    Probe::TlsSwSendpage | Probe::TlsDeviceSendpage => true,
                    _ if f & facts::FLAGS != 0 => f & facts::SPLICE != 0,
                    _ => c.in_sendfile,
                };
                let path = match (e.probe.role(), splice) {
                    (Role::KtlsDevice, _) => Path::KtlsDevice,
                    (_, true) => Path::KtlsSendfile,
                    (_, false) => Path::KtlsWrite,
                };
                if !splice && f & facts::TWO_BYTES != 0 {
                    c.control = done;
                } else {
                    c.payload = Some((path, done));
                }
                c.tls_latency_ns = e.latency_ns;
                self.ktls_send(e, &mut c, splice);
            }
            Role::KtlsFlush => self.ktls_send(e, &mut c, true),
            Role::TcpSend => {
                if ktls_parent {
                    // Not a path the kernel takes; never count kernel TLS internals twice.
                } else if c.in_sendfile {
                    // 6.5+: splice_to_socket -> sock_sendmsg -> tcp_sendmsg.
                    c.payload = Some((Path::PlainSendfile, done));
                } else if facts_of() & facts::TLS_HEAD != 0 {
                    c.payload = Some((Path::UserspaceTls, done));
                } else {
                    c.payload = Some((Path::Plain, done));
                }
            }
            Role::TcpPush => {
                let owner = e.sock.and_then(|s| self.socks.get_mut(&s));
                if ktls_parent {
                    c.ciphertext = done;
                } else if e.parent.is_some_and(|p| p.role() == Role::TcpSend) {
                    // Counted at the enclosing tcp_sendmsg, which kernel TLS never calls:
                    // not ciphertext even on a socket that becomes a kTLS socket later
                    // (its handshake), whichever order the classifier learns that in.
                } else if let Some(o) = owner {
                    // The tx worker (or a later send) flushing this kTLS socket's records.
                    o.last_ns = o.last_ns.max(e.ts_ns);
                    c.ciphertext = done;
                    if o.owner != e.pid {
                        c.pid = o.owner;
                        c.name = o.name;
                        c.on_behalf = true;
                    }
                } else if c.in_sendfile {
                    // Before 6.5: pipe_to_sendpage -> do_tcp_sendpages.
                    c.payload = Some((Path::PlainSendfile, done));
                } else {
                    c.payload = Some((Path::Plain, done));
                }
            }
            Role::SockSend => {
                let path = if c.in_sendfile {
                    Path::PlainSendfile
                } else {
                    Path::Plain
                };
                c.payload = Some((path, done));
            }
        }
        c
    }

    /// Records, socket and its owner of a kernel TLS send or flush.
    fn ktls_send(&mut self, e: &TraceEvent, c: &mut Contribution, splice: bool) {
        c.records = e.records.map(u64::from);
        let Some(sock) = e.sock else {
            return;
        };
        let params = e.tls.and_then(|w| w.params());
        let name = e.process_name();
        // Every kTLS send names its socket: update the owner in place.
        let s = self.socks.entry(sock).or_insert(KtlsSock {
            owner: e.pid,
            name,
            params,
            last_ns: e.ts_ns,
        });
        s.owner = e.pid;
        s.name = name;
        s.last_ns = s.last_ns.max(e.ts_ns);
        if params.is_some() {
            s.params = params;
        }
        if self.rules.ciphertext_derived {
            // The plaintext taken in (payload or an alert) and what its records add on the
            // wire, counted when they close: over a connection, exactly the bytes pushed.
            // A version or cipher not known here adds nothing (docs/top.md).
            let overhead = s.params.and_then(|p| p.record_overhead()).unwrap_or(0);
            c.ciphertext = e
                .bytes_done()
                .saturating_add(c.records.unwrap_or(0).saturating_mul(overhead));
        }
        c.ktls = Some(KtlsSend {
            sock,
            params: s.params,
            splice,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        event::TlsWire,
        tls::{Cipher, TlsVersion},
    };
    use ktls_trace_common::{HEAD_LEN, msg};

    /// A synthetic event: probe, pid, bytes done, socket.
    pub(crate) fn ev(probe: Probe, pid: u32, done: i64, sock: Option<u64>) -> TraceEvent {
        TraceEvent {
            ts_ns: 0,
            pid,
            tid: pid,
            comm: Comm::new(&format!("proc{pid}")),
            process: None,
            probe,
            bytes: done.max(0) as u64,
            ret: Some(done),
            latency_ns: Some(1_000),
            sock,
            flags: None,
            fds: None,
            parent: None,
            root: None,
            head: None,
            records: None,
            tls: None,
        }
    }

    pub(crate) fn under(mut e: TraceEvent, parent: Probe, root: Probe) -> TraceEvent {
        e.parent = Some(parent);
        e.root = Some(root);
        e
    }

    pub(crate) const TLS13: TlsWire = TlsWire {
        version: 0x0304,
        cipher: 51,
    };

    fn classify(e: &TraceEvent) -> Contribution {
        Classifier::default().classify(e)
    }

    #[test]
    fn splice_into_ktls_is_zero_copy_sendfile() {
        // 6.12: tls_sw_sendmsg with MSG_SPLICE_PAGES inside do_sendfile.
        let mut e = under(
            ev(Probe::TlsSwSendmsg, 1, 65_536, Some(9)),
            Probe::DoSendfile,
            Probe::DoSendfile,
        );
        e.flags = Some(msg::MSG_SPLICE_PAGES | msg::MSG_MORE);
        e.records = Some(4);
        e.tls = Some(TLS13);
        let c = classify(&e);
        assert_eq!(c.payload, Some((Path::KtlsSendfile, 65_536)));
        assert_eq!(c.records, Some(4));
        assert!(c.in_sendfile);
        let k = c.ktls.unwrap();
        assert_eq!((k.sock, k.splice), (9, true));
        assert_eq!(
            k.params,
            Some(TlsParams {
                version: TlsVersion::Tls13,
                cipher: Cipher::Aes128Gcm
            })
        );
        assert_eq!(c.tls_latency_ns, Some(1_000));
        // Also from splice(2) without sendfile: the flag decides, not the nesting.
        e.parent = None;
        e.root = None;
        let c = classify(&e);
        assert_eq!(c.payload.map(|p| p.0), Some(Path::KtlsSendfile));
        assert!(!c.in_sendfile);
        // 6.1: tls_sw_sendpage, one call per page; the syscall tracepoint as sendfile.
        let e = under(
            ev(Probe::TlsSwSendpage, 1, 4096, Some(9)),
            Probe::Sendfile64,
            Probe::Sendfile64,
        );
        let c = classify(&e);
        assert_eq!(c.payload, Some((Path::KtlsSendfile, 4096)));
        assert!(c.in_sendfile);
        assert_eq!(c.records, None, "not read on this kernel");
    }

    /// With the pushes not probed (top from 6.5), a kernel TLS send's ciphertext is its
    /// plaintext plus its records' overhead: TLS 1.3 adds 22 bytes a record, TLS 1.2
    /// AES-GCM 29. A flush closes records without taking plaintext; an alert is plaintext
    /// too; a cipher this build does not know adds nothing.
    #[test]
    fn derived_ciphertext_is_plaintext_plus_record_overhead() {
        let mut k = Classifier::new(Rules {
            ciphertext_derived: true,
            ..Rules::default()
        });
        let mut e = under(
            ev(Probe::TlsSwSendmsg, 1, 65_536, Some(9)),
            Probe::DoSendfile,
            Probe::DoSendfile,
        );
        e.flags = Some(msg::MSG_SPLICE_PAGES);
        e.records = Some(4);
        e.tls = Some(TLS13);
        assert_eq!(k.classify(&e).ciphertext, 65_536 + 4 * 22);
        // Observed pushes are the default: the send itself adds no ciphertext.
        assert_eq!(classify(&e).ciphertext, 0);
        // The flush at the end of a splice closes the open record.
        let mut flush = ev(Probe::TlsSwSpliceEof, 1, 0, Some(9));
        flush.ret = None;
        flush.records = Some(1);
        assert_eq!(k.classify(&flush).ciphertext, 22);
        // TLS 1.2 AES-GCM-128, the socket's params from an earlier send of it.
        let mut w = ev(Probe::TlsSwSendmsg, 1, 1000, Some(10));
        w.tls = Some(TlsWire {
            version: 0x0303,
            cipher: 51,
        });
        w.records = Some(1);
        assert_eq!(k.classify(&w).ciphertext, 1000 + 29);
        w.tls = None;
        assert_eq!(k.classify(&w).ciphertext, 1000 + 29);
        // An alert's two bytes are a record too.
        let mut alert = ev(Probe::TlsSwSendmsg, 1, 2, Some(10));
        alert.records = Some(1);
        let c = k.classify(&alert);
        assert_eq!((c.control, c.ciphertext), (2, 2 + 29));
        // Unknown cipher on a new socket: the plaintext only.
        let mut odd = ev(Probe::TlsSwSendmsg, 1, 100, Some(11));
        odd.tls = Some(TlsWire {
            version: 0x0303,
            cipher: 9999,
        });
        odd.records = Some(1);
        assert_eq!(k.classify(&odd).ciphertext, 100);
    }

    #[test]
    fn sendmsg_without_splice_flag_is_ktls_write_and_two_bytes_are_an_alert() {
        let mut e = ev(Probe::TlsSwSendmsg, 1, 1000, Some(9));
        e.flags = Some(msg::MSG_NOSIGNAL);
        assert_eq!(classify(&e).payload, Some((Path::KtlsWrite, 1000)));
        // Flags unknown: nesting in sendfile decides.
        e.flags = None;
        assert_eq!(classify(&e).payload.map(|p| p.0), Some(Path::KtlsWrite));
        let e2 = under(e.clone(), Probe::DoSendfile, Probe::DoSendfile);
        assert_eq!(classify(&e2).payload.map(|p| p.0), Some(Path::KtlsSendfile));
        let alert = ev(Probe::TlsSwSendmsg, 1, 2, Some(9));
        let c = classify(&alert);
        assert_eq!((c.payload, c.control), (None, 2));
        assert!(c.ktls.is_some());
    }

    #[test]
    fn device_offload_and_flush() {
        for p in [Probe::TlsDeviceSendmsg, Probe::TlsDeviceSendpage] {
            let c = classify(&ev(p, 1, 500, Some(3)));
            assert_eq!(c.payload, Some((Path::KtlsDevice, 500)));
            assert_eq!(c.ktls.map(|k| k.sock), Some(3));
        }
        let mut eof = ev(Probe::TlsSwSpliceEof, 1, 0, Some(3));
        eof.ret = None;
        eof.records = Some(1);
        let c = classify(&eof);
        assert_eq!((c.payload, c.records), (None, Some(1)));
        assert!(!c.is_empty());
    }

    #[test]
    fn tls_record_header_detection() {
        let h = |b: [u8; 5]| {
            let mut a = [0u8; HEAD_LEN];
            a[..5].copy_from_slice(&b);
            a
        };
        assert!(looks_like_tls_record(&h([0x17, 3, 3, 0x40, 0x11])));
        assert!(looks_like_tls_record(&h([0x15, 3, 3, 0, 2])));
        assert!(looks_like_tls_record(&h([0x16, 3, 1, 2, 0])));
        assert!(looks_like_tls_record(&h([0x16, 3, 3, 0, 0x7a])));
        assert!(
            !looks_like_tls_record(&h([0x17, 3, 1, 0, 10])),
            "appdata needs 0x0303"
        );
        assert!(!looks_like_tls_record(&h(*b"GET /")));
        assert!(!looks_like_tls_record(&h(*b"HTTP/")));
        assert!(
            !looks_like_tls_record(&h([0x17, 3, 3, 0, 0])),
            "empty record"
        );
        assert!(
            !looks_like_tls_record(&h([0x17, 3, 3, 0xff, 0xff])),
            "too long"
        );
        assert!(!looks_like_tls_record(&[0; HEAD_LEN]));
    }

    #[test]
    fn tcp_sendmsg_paths() {
        let mut e = ev(Probe::TcpSendmsg, 1, 300, Some(4));
        assert_eq!(classify(&e).payload, Some((Path::Plain, 300)));
        e.head = Some([0x17, 0x03, 0x03, 0x01, 0x00, 0xaa, 0xbb, 0xcc]);
        assert_eq!(classify(&e).payload, Some((Path::UserspaceTls, 300)));
        e.head = Some(*b"GET / HT");
        assert_eq!(classify(&e).payload, Some((Path::Plain, 300)));
        // 6.5+ plain sendfile: tcp_sendmsg (MSG_SPLICE_PAGES) inside do_sendfile.
        let e = under(e, Probe::DoSendfile, Probe::DoSendfile);
        assert_eq!(classify(&e).payload, Some((Path::PlainSendfile, 300)));
    }

    #[test]
    fn tcp_pushes() {
        // Inside a kTLS send: ciphertext of the caller.
        let e = under(
            ev(Probe::DoTcpSendpages, 1, 16_406, Some(4)),
            Probe::TlsSwSendpage,
            Probe::DoSendfile,
        );
        let c = classify(&e);
        assert_eq!(
            (c.ciphertext, c.pid, c.on_behalf, c.payload),
            (16_406, 1, false, None)
        );
        // From the tx worker (no parent) on a known kTLS socket: the socket's owner.
        let mut k = Classifier::default();
        let mut w = ev(Probe::TlsSwSendmsg, 200, 1000, Some(4));
        w.process = Some(Comm::new("nginx"));
        k.classify(&w);
        let e = ev(Probe::TcpSendmsgLocked, 77, 16_406, Some(4));
        let c = k.classify(&e);
        assert_eq!((c.ciphertext, c.pid, c.on_behalf), (16_406, 200, true));
        assert_eq!(c.name, "nginx");
        assert_eq!(k.ktls_owner(4), Some(200));
        // Same on an unknown socket: plain bytes of whoever pushed them.
        let c = classify(&e);
        assert_eq!((c.ciphertext, c.payload), (0, Some((Path::Plain, 16_406))));
        // Under tcp_sendmsg: counted there, not here.
        let e = under(
            ev(Probe::TcpSendmsgLocked, 1, 100, Some(5)),
            Probe::TcpSendmsg,
            Probe::TcpSendmsg,
        );
        assert!(classify(&e).is_empty());
        // 6.1 plain sendfile: do_tcp_sendpages right inside do_sendfile.
        let e = under(
            ev(Probe::DoTcpSendpages, 1, 4096, Some(5)),
            Probe::DoSendfile,
            Probe::DoSendfile,
        );
        assert_eq!(classify(&e).payload, Some((Path::PlainSendfile, 4096)));
        // Errors move no bytes.
        let e = under(
            ev(Probe::DoTcpSendpages, 1, -11, Some(4)),
            Probe::TlsSwSendpage,
            Probe::DoSendfile,
        );
        assert_eq!(classify(&e).ciphertext, 0);
    }

    #[test]
    fn idle_ktls_sockets_are_forgotten() {
        let mut k = Classifier::default();
        let mut w = ev(Probe::TlsSwSendmsg, 200, 1000, Some(4));
        w.ts_ns = 10;
        w.tls = Some(TLS13);
        k.classify(&w);
        assert!(k.ktls_params(4).is_some());
        k.forget_idle(SOCK_FORGET_NS);
        assert_eq!(k.ktls_owner(4), Some(200));
        k.forget_idle(SOCK_FORGET_NS + 11);
        assert_eq!(k.ktls_owner(4), None);
    }

    #[test]
    fn tracepoint_mode() {
        let sf = ev(Probe::Sendfile64, 1, 1_000_000, None);
        let c = classify(&sf);
        assert_eq!(c.sendfile, Some(1_000_000));
        assert_eq!(c.sendfile_latency_ns, Some(1_000));
        assert_eq!(c.payload, None);
        let c = Classifier::new(Rules {
            sendfile_is_payload: true,
            ..Rules::default()
        })
        .classify(&sf);
        assert_eq!(c.payload, Some((Path::PlainSendfile, 1_000_000)));
        let ssl = under(
            ev(Probe::SockSendLength, 1, 65_536, Some(2)),
            Probe::Sendfile64,
            Probe::Sendfile64,
        );
        assert_eq!(classify(&ssl).payload, Some((Path::PlainSendfile, 65_536)));
        let ssl = ev(Probe::SockSendLength, 1, 10, Some(2));
        assert_eq!(classify(&ssl).payload, Some((Path::Plain, 10)));
    }

    #[test]
    fn path_bytes() {
        let mut b = PathBytes::default();
        assert_eq!((b.main_path(), b.zero_copy_share()), (None, None));
        b.add(Path::KtlsWrite, 10);
        b.add(Path::KtlsSendfile, 30);
        b.add(Path::Plain, 60);
        assert_eq!(b.main_path(), Some(Path::Plain));
        assert_eq!((b.total(), b.ktls()), (100, 40));
        assert_eq!(b.zero_copy_share(), Some(0.3));
        b.add(Path::KtlsSendfile, 30);
        assert_eq!(
            b.main_path(),
            Some(Path::KtlsSendfile),
            "ties: the first path wins"
        );
        let v = serde_json::to_value(b).unwrap();
        assert_eq!(v["ktls-sendfile"], 60);
        assert_eq!(v["plain"], 60);
        assert_eq!(
            serde_json::to_value(Path::UserspaceTls).unwrap(),
            "userspace-tls"
        );
    }
}
