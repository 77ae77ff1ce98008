//! Path classification: pure rules from one decoded event to what it contributes to a
//! process's numbers. The rules are written down in docs/top.md and hold for any program:
//! they look only at which kernel function ran, its flags, its nesting, the socket, and
//! (for `tcp_sendmsg`) the first payload bytes the program handed to TCP.

use ktls_trace_common::{HEAD_LEN, Probe};

use crate::event::TraceEvent;

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

/// Whose numbers an event's contribution goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The process that made the call (the event's pid).
    Caller,
    /// The process that owns this kernel TLS socket (learned from its earlier kTLS
    /// sends): used for records and pushes the kernel's TLS tx worker runs later.
    Socket(u64),
}

/// What one event adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contribution {
    pub owner: Owner,
    /// Payload bytes and the path they take.
    pub payload: Option<(Path, u64)>,
    /// Ciphertext bytes kernel TLS pushed into TCP.
    pub ciphertext: u64,
    /// One kernel TLS record was closed and pushed.
    pub record: bool,
    /// One sendfile(2) call completed.
    pub sendfile_call: bool,
    /// Latency of a `do_sendfile` / `sendfile64` call.
    pub sendfile_latency_ns: Option<u64>,
    /// Latency of a `tls_sw_sendmsg` / `tls_sw_sendpage` call.
    pub tls_latency_ns: Option<u64>,
    /// This socket is a kernel TLS socket of the caller.
    pub ktls_sock: Option<u64>,
}

impl Contribution {
    fn caller() -> Contribution {
        Contribution {
            owner: Owner::Caller,
            payload: None,
            ciphertext: 0,
            record: false,
            sendfile_call: false,
            sendfile_latency_ns: None,
            tls_latency_ns: None,
            ktls_sock: None,
        }
    }

    /// Adds nothing to anyone's numbers (it may still mark a socket).
    pub fn is_empty(&self) -> bool {
        self.payload.is_none_or(|(_, b)| b == 0)
            && self.ciphertext == 0
            && !self.record
            && !self.sendfile_call
            && self.sendfile_latency_ns.is_none()
            && self.tls_latency_ns.is_none()
    }
}

/// Facts about the running trace that change how events count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Tracepoint mode without `sock:sock_send_length` (kernels before 6.3): the bytes
    /// sendfile64 returns are the only payload figure there is.
    pub sendfile64_is_payload: bool,
}

/// The kernel TLS send functions (a TCP push nested in one of them carries ciphertext).
pub const fn is_ktls_call(p: Probe) -> bool {
    matches!(
        p,
        Probe::TlsSwSendmsg
            | Probe::TlsSwSendpage
            | Probe::TlsSwSpliceEof
            | Probe::TlsDeviceSendmsg
            | Probe::TlsDeviceSendpage
    )
}

/// Largest length a TLS record header may announce: 2^14 plaintext plus the TLS 1.2
/// allowance of 2048 bytes of expansion (RFC 5246 6.2.3; TLS 1.3 allows 256).
pub const TLS_MAX_RECORD_LEN: u16 = (1 << 14) + 2048;

/// Do these first payload bytes start a TLS record? Content type 0x17 (application data),
/// 0x15 (alert) or 0x16 (handshake), legacy version 0x0303 (0x0301 is also accepted for
/// handshakes: ClientHello records), and a length a record can have.
pub fn looks_like_tls_record(head: &[u8; HEAD_LEN]) -> bool {
    let version_ok = match head[0] {
        0x17 | 0x15 => head[1] == 0x03 && head[2] == 0x03,
        0x16 => head[1] == 0x03 && (head[2] == 0x03 || head[2] == 0x01),
        _ => false,
    };
    let len = u16::from_be_bytes([head[3], head[4]]);
    version_ok && len > 0 && len <= TLS_MAX_RECORD_LEN
}

/// `tls_push_record` return values that still mean "a record was closed": 0, and the
/// record waiting for async crypto (-EINPROGRESS) or for TCP space (-EAGAIN, pushed
/// later by the tx worker).
fn record_closed(ret: Option<i64>) -> bool {
    match ret {
        None => true,
        Some(r) => r >= 0 || r == -i64::from(libc::EINPROGRESS) || r == -i64::from(libc::EAGAIN),
    }
}

/// Classifies one event. `sock_is_ktls` says whether the event's socket is already known
/// (from earlier events) to be a kernel TLS socket.
pub fn classify(e: &TraceEvent, sock_is_ktls: bool, rules: &Rules) -> Contribution {
    let mut c = Contribution::caller();
    let done = e.bytes_done();
    let ktls_parent = e.parent.is_some_and(is_ktls_call);
    match e.probe {
        Probe::DoSendfile => {
            c.sendfile_call = true;
            c.sendfile_latency_ns = e.latency_ns;
        }
        Probe::Sendfile64 => {
            c.sendfile_call = true;
            c.sendfile_latency_ns = e.latency_ns;
            if rules.sendfile64_is_payload {
                c.payload = Some((Path::PlainSendfile, done));
            }
        }
        Probe::TlsSwSendpage => {
            c.payload = Some((Path::KtlsSendfile, done));
            c.tls_latency_ns = e.latency_ns;
            c.ktls_sock = e.sock;
        }
        Probe::TlsSwSendmsg => {
            // Without the flags (offset unknown on this kernel), a call inside
            // do_sendfile is the splice path.
            let splice = match e.flags {
                Some(_) => e.is_splice(),
                None => e.nested_in(Probe::DoSendfile),
            };
            let path = if splice {
                Path::KtlsSendfile
            } else {
                Path::KtlsWrite
            };
            c.payload = Some((path, done));
            c.tls_latency_ns = e.latency_ns;
            c.ktls_sock = e.sock;
        }
        Probe::TlsDeviceSendmsg | Probe::TlsDeviceSendpage => {
            c.payload = Some((Path::KtlsDevice, done));
            c.ktls_sock = e.sock;
        }
        Probe::TlsSwSpliceEof => {
            c.ktls_sock = e.sock;
        }
        Probe::TlsPushRecord => {
            c.record = record_closed(e.ret);
            if !ktls_parent
                && sock_is_ktls
                && let Some(s) = e.sock
            {
                c.owner = Owner::Socket(s);
            }
        }
        Probe::TcpSendmsg => {
            if ktls_parent {
                // Not a path the kernel takes; never count kernel TLS internals twice.
            } else if e.nested_in(Probe::DoSendfile) {
                c.payload = Some((Path::PlainSendfile, done));
            } else if e.head.as_ref().is_some_and(looks_like_tls_record) {
                c.payload = Some((Path::UserspaceTls, done));
            } else {
                c.payload = Some((Path::Plain, done));
            }
        }
        Probe::DoTcpSendpages | Probe::TcpSendmsgLocked => {
            if ktls_parent {
                c.ciphertext = done;
            } else if sock_is_ktls {
                c.ciphertext = done;
                if let Some(s) = e.sock {
                    c.owner = Owner::Socket(s);
                }
            } else if e.parent == Some(Probe::TcpSendmsg) {
                // Counted at the enclosing tcp_sendmsg.
            } else if e.nested_in(Probe::DoSendfile) {
                c.payload = Some((Path::PlainSendfile, done));
            } else {
                c.payload = Some((Path::Plain, done));
            }
        }
        Probe::SockSendLength => {
            let path = if e.nested_in(Probe::Sendfile64) {
                Path::PlainSendfile
            } else {
                Path::Plain
            };
            c.payload = Some((path, done));
        }
    }
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ktls_trace_common::msg;

    /// A synthetic event: probe, pid, bytes done, socket.
    pub(crate) fn ev(probe: Probe, pid: u32, done: i64, sock: Option<u64>) -> TraceEvent {
        TraceEvent {
            ts_ns: 0,
            pid,
            tid: pid,
            comm: format!("proc{pid}"),
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
        }
    }

    pub(crate) fn under(mut e: TraceEvent, parent: Probe, root: Probe) -> TraceEvent {
        e.parent = Some(parent);
        e.root = Some(root);
        e
    }

    const R: Rules = Rules {
        sendfile64_is_payload: false,
    };

    #[test]
    fn splice_into_ktls_is_zero_copy_sendfile() {
        // 6.12: tls_sw_sendmsg with MSG_SPLICE_PAGES inside do_sendfile.
        let mut e = under(
            ev(Probe::TlsSwSendmsg, 1, 65_536, Some(9)),
            Probe::DoSendfile,
            Probe::DoSendfile,
        );
        e.flags = Some(msg::MSG_SPLICE_PAGES | msg::MSG_MORE);
        let c = classify(&e, false, &R);
        assert_eq!(c.payload, Some((Path::KtlsSendfile, 65_536)));
        assert_eq!(c.ktls_sock, Some(9));
        assert_eq!(c.tls_latency_ns, Some(1_000));
        // Also from splice(2) without sendfile: the flag decides, not the nesting.
        e.parent = None;
        e.root = None;
        assert_eq!(
            classify(&e, false, &R).payload.map(|p| p.0),
            Some(Path::KtlsSendfile)
        );
        // 6.1: tls_sw_sendpage, one call per page.
        let e = ev(Probe::TlsSwSendpage, 1, 4096, Some(9));
        assert_eq!(
            classify(&e, false, &R).payload,
            Some((Path::KtlsSendfile, 4096))
        );
    }

    #[test]
    fn sendmsg_without_splice_flag_is_ktls_write() {
        let mut e = ev(Probe::TlsSwSendmsg, 1, 1000, Some(9));
        e.flags = Some(msg::MSG_NOSIGNAL);
        assert_eq!(
            classify(&e, false, &R).payload,
            Some((Path::KtlsWrite, 1000))
        );
        // Flags unknown: nesting in do_sendfile decides.
        e.flags = None;
        assert_eq!(
            classify(&e, false, &R).payload.map(|p| p.0),
            Some(Path::KtlsWrite)
        );
        let e = under(e, Probe::DoSendfile, Probe::DoSendfile);
        assert_eq!(
            classify(&e, false, &R).payload.map(|p| p.0),
            Some(Path::KtlsSendfile)
        );
    }

    #[test]
    fn device_offload() {
        for p in [Probe::TlsDeviceSendmsg, Probe::TlsDeviceSendpage] {
            let c = classify(&ev(p, 1, 500, Some(3)), false, &R);
            assert_eq!(c.payload, Some((Path::KtlsDevice, 500)));
            assert_eq!(c.ktls_sock, Some(3));
        }
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
        assert_eq!(classify(&e, false, &R).payload, Some((Path::Plain, 300)));
        e.head = Some([0x17, 0x03, 0x03, 0x01, 0x00, 0xaa, 0xbb, 0xcc]);
        assert_eq!(
            classify(&e, false, &R).payload,
            Some((Path::UserspaceTls, 300))
        );
        e.head = Some(*b"GET / HT");
        assert_eq!(classify(&e, false, &R).payload, Some((Path::Plain, 300)));
        // 6.5+ plain sendfile: tcp_sendmsg (MSG_SPLICE_PAGES) inside do_sendfile.
        let e = under(e, Probe::DoSendfile, Probe::DoSendfile);
        assert_eq!(
            classify(&e, false, &R).payload,
            Some((Path::PlainSendfile, 300))
        );
    }

    #[test]
    fn tcp_pushes() {
        // Inside a kTLS send: ciphertext of the caller.
        let e = under(
            ev(Probe::DoTcpSendpages, 1, 16_406, Some(4)),
            Probe::TlsSwSendpage,
            Probe::DoSendfile,
        );
        let c = classify(&e, false, &R);
        assert_eq!(
            (c.ciphertext, c.owner, c.payload),
            (16_406, Owner::Caller, None)
        );
        // From the tx worker (no parent) on a known kTLS socket: the socket's owner.
        let e = ev(Probe::TcpSendmsgLocked, 77, 16_406, Some(4));
        let c = classify(&e, true, &R);
        assert_eq!((c.ciphertext, c.owner), (16_406, Owner::Socket(4)));
        // Same on an unknown socket: plain bytes of whoever pushed them.
        let c = classify(&e, false, &R);
        assert_eq!((c.ciphertext, c.payload), (0, Some((Path::Plain, 16_406))));
        // Under tcp_sendmsg: counted there, not here.
        let e = under(
            ev(Probe::TcpSendmsgLocked, 1, 100, Some(5)),
            Probe::TcpSendmsg,
            Probe::TcpSendmsg,
        );
        assert!(classify(&e, false, &R).is_empty());
        // 6.1 plain sendfile: do_tcp_sendpages right inside do_sendfile.
        let e = under(
            ev(Probe::DoTcpSendpages, 1, 4096, Some(5)),
            Probe::DoSendfile,
            Probe::DoSendfile,
        );
        assert_eq!(
            classify(&e, false, &R).payload,
            Some((Path::PlainSendfile, 4096))
        );
        // Errors move no bytes.
        let e = under(
            ev(Probe::DoTcpSendpages, 1, -11, Some(4)),
            Probe::TlsSwSendpage,
            Probe::DoSendfile,
        );
        assert_eq!(classify(&e, false, &R).ciphertext, 0);
    }

    #[test]
    fn records() {
        let e = under(
            ev(Probe::TlsPushRecord, 1, 0, Some(4)),
            Probe::TlsSwSendmsg,
            Probe::DoSendfile,
        );
        let c = classify(&e, true, &R);
        assert!(c.record);
        assert_eq!(c.owner, Owner::Caller);
        let worker = ev(Probe::TlsPushRecord, 99, 0, Some(4));
        assert_eq!(classify(&worker, true, &R).owner, Owner::Socket(4));
        assert_eq!(classify(&worker, false, &R).owner, Owner::Caller);
        let mut async_crypto = worker.clone();
        async_crypto.ret = Some(-i64::from(libc::EINPROGRESS));
        assert!(classify(&async_crypto, true, &R).record);
        let mut failed = worker;
        failed.ret = Some(-i64::from(libc::EBADMSG));
        assert!(!classify(&failed, true, &R).record);
    }

    #[test]
    fn tracepoint_mode() {
        let sf = ev(Probe::Sendfile64, 1, 1_000_000, None);
        let c = classify(&sf, false, &R);
        assert!(c.sendfile_call);
        assert_eq!(c.sendfile_latency_ns, Some(1_000));
        assert_eq!(c.payload, None);
        let c = classify(
            &sf,
            false,
            &Rules {
                sendfile64_is_payload: true,
            },
        );
        assert_eq!(c.payload, Some((Path::PlainSendfile, 1_000_000)));
        let ssl = under(
            ev(Probe::SockSendLength, 1, 65_536, Some(2)),
            Probe::Sendfile64,
            Probe::Sendfile64,
        );
        assert_eq!(
            classify(&ssl, false, &R).payload,
            Some((Path::PlainSendfile, 65_536))
        );
        let ssl = ev(Probe::SockSendLength, 1, 10, Some(2));
        assert_eq!(classify(&ssl, false, &R).payload, Some((Path::Plain, 10)));
    }

    #[test]
    fn sendfile_calls_and_latency() {
        let c = classify(&ev(Probe::DoSendfile, 1, 10, None), false, &R);
        assert!(c.sendfile_call);
        assert_eq!(c.sendfile_latency_ns, Some(1_000));
        assert_eq!(
            c.payload, None,
            "file bytes are counted where they meet the socket"
        );
    }
}
