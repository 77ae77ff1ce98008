//! The verdict of `verify`: pure code from the traced events of the server process and
//! the two load reports to five stages and the path the payload took. Unit-tested with
//! synthetic event streams for each path.

use std::collections::{BTreeMap, BTreeSet};

use ktls_trace_common::Probe;
use serde::Serialize;

use crate::event::TraceEvent;

/// What the load side reported (the parts the judge needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// File bytes the server sent in bodies.
    pub body_bytes: u64,
    /// HTTP response-head bytes the server wrote.
    pub header_bytes: u64,
    pub requests: u64,
    pub connections: u64,
    /// Negotiated "1.2" / "1.3", None without TLS.
    pub tls_version: Option<String>,
    /// Negotiated cipher name (aes-128-gcm, aes-256-gcm, chacha20-poly1305).
    pub cipher: Option<String>,
    /// The client decrypted everything and every body matched.
    pub client_verified: bool,
    pub client_body_bytes: u64,
    pub client_requests: u64,
    pub client_errors: Vec<String>,
}

/// Bytes of overhead per TLS record on the wire, by version and cipher
/// (5-byte header + explicit nonce (TLS 1.2 GCM: 8) + content type (TLS 1.3: 1) + 16-byte tag).
pub fn record_overhead(version: &str, cipher: &str) -> Option<u64> {
    match (version, cipher) {
        ("1.3", _) => Some(5 + 1 + 16),
        ("1.2", "aes-128-gcm" | "aes-256-gcm") => Some(5 + 8 + 16),
        ("1.2", "chacha20-poly1305") => Some(5 + 16),
        _ => None,
    }
}

/// Where the payload went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Path {
    #[serde(rename = "kTLS sendfile (zero-copy)")]
    KtlsSendfile,
    #[serde(rename = "kTLS write")]
    KtlsWrite,
    #[serde(rename = "user-space TLS")]
    UserspaceTls,
    #[serde(rename = "plain sendfile")]
    PlainSendfile,
    #[serde(rename = "unknown")]
    Unknown,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::KtlsSendfile => "kTLS sendfile (zero-copy)",
            Path::KtlsWrite => "kTLS write",
            Path::UserspaceTls => "user-space TLS",
            Path::PlainSendfile => "plain sendfile",
            Path::Unknown => "unknown",
        }
    }
}

/// One stage's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    pub stage: u8,
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

/// The numbers the stages were judged on (printed with `--json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Numbers {
    pub sendfile_bytes: u64,
    pub splice_plaintext_bytes: u64,
    pub splice_calls_outside_sendfile: u64,
    pub write_plaintext_bytes: u64,
    /// 2-byte writes into kTLS: TLS alerts (close_notify), not payload.
    pub alert_records: u64,
    /// Alert records the kernel could not push (the peer had already closed).
    pub unpushed_alerts: u64,
    pub ciphertext_bytes: u64,
    pub records: u64,
    pub record_overhead: Option<u64>,
    pub handshake_bytes: u64,
    pub user_tcp_payload_bytes: u64,
    pub tls_sockets: usize,
    pub plaintext_probe: Option<&'static str>,
    pub push_probe: Option<&'static str>,
}

/// The whole verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub pass: bool,
    pub path: Path,
    pub stages: Vec<Stage>,
    pub numbers: Numbers,
}

fn is_tls_send(p: Probe) -> bool {
    matches!(
        p,
        Probe::TlsSwSendmsg
            | Probe::TlsSwSendpage
            | Probe::TlsDeviceSendmsg
            | Probe::TlsDeviceSendpage
    )
}

fn is_push(p: Probe) -> bool {
    matches!(p, Probe::DoTcpSendpages | Probe::TcpSendmsgLocked)
}

/// A kTLS send on the splice path: sendpage, or sendmsg with MSG_SPLICE_PAGES.
fn is_splice_send(e: &TraceEvent) -> bool {
    match e.probe {
        Probe::TlsSwSendpage | Probe::TlsDeviceSendpage => true,
        Probe::TlsSwSendmsg | Probe::TlsDeviceSendmsg => e.is_splice(),
        _ => false,
    }
}

/// Judges the events of one traced `load --server-only` run.
pub fn judge(events: &[TraceEvent], served: &Served) -> Verdict {
    let mut n = Numbers::default();

    // Sockets handed to kernel TLS, and when kTLS started on each.
    let mut tls_start: BTreeMap<u64, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| is_tls_send(e.probe)) {
        if let Some(s) = e.sock {
            let t = tls_start.entry(s).or_insert(u64::MAX);
            *t = (*t).min(e.ts_ns.saturating_sub(e.latency_ns.unwrap_or(0)));
        }
    }
    n.tls_sockets = tls_start.len();

    let mut push_probes = BTreeSet::new();
    let mut plain_probes = BTreeSet::new();
    for e in events {
        match e.probe {
            Probe::DoSendfile => n.sendfile_bytes += e.bytes_done(),
            p if is_tls_send(p) => {
                if is_splice_send(e) {
                    n.splice_plaintext_bytes += e.bytes_done();
                    plain_probes.insert(p.name());
                    if !e.nested_in(Probe::DoSendfile) {
                        n.splice_calls_outside_sendfile += 1;
                    }
                } else {
                    n.write_plaintext_bytes += e.bytes_done();
                    // An alert record carries exactly 2 bytes (level, description).
                    if e.bytes == 2 && e.bytes_done() == 2 {
                        n.alert_records += 1;
                    }
                }
            }
            Probe::TlsPushRecord => n.records += 1,
            p if is_push(p) => {
                // Ciphertext: pushes on a kTLS socket that are not the socket layer's own
                // tcp_sendmsg -> tcp_sendmsg_locked (those carried the handshake).
                let on_tls = e.sock.is_some_and(|s| tls_start.contains_key(&s));
                if on_tls && !e.nested_in(Probe::TcpSendmsg) {
                    n.ciphertext_bytes += e.bytes_done();
                    push_probes.insert(p.name());
                }
            }
            // Inside do_sendfile (6.5+: splice_to_socket -> sock_sendmsg) tcp_sendmsg
            // carries spliced pages, not a user-space write.
            Probe::TcpSendmsg if e.nested_in(Probe::DoSendfile) => {}
            Probe::TcpSendmsg => {
                let started = e.sock.and_then(|s| tls_start.get(&s)).copied();
                match started {
                    // Before kTLS took the socket over: the user-space TLS handshake.
                    Some(t) if e.ts_ns <= t => n.handshake_bytes += e.bytes_done(),
                    _ => n.user_tcp_payload_bytes += e.bytes_done(),
                }
            }
            _ => {}
        }
    }
    n.plaintext_probe = plain_probes.into_iter().next();
    n.push_probe = push_probes.into_iter().next();
    n.record_overhead = match (&served.tls_version, &served.cipher) {
        (Some(v), Some(c)) => record_overhead(v, c),
        _ => None,
    };

    // The HTTP heads and TLS alerts (close_notify: 2 bytes of plaintext each) are the only
    // plaintext allowed through write().
    let alerts = 2 * n.alert_records;
    let body = served.body_bytes;

    let path = if n.splice_plaintext_bytes > 0 && n.splice_plaintext_bytes >= body {
        Path::KtlsSendfile
    } else if n.write_plaintext_bytes > served.header_bytes + alerts {
        Path::KtlsWrite
    } else if n.tls_sockets == 0 && n.user_tcp_payload_bytes >= body && body > 0 {
        Path::UserspaceTls
    } else if n.tls_sockets == 0 && n.sendfile_bytes >= body && body > 0 {
        Path::PlainSendfile
    } else {
        Path::Unknown
    };

    let mut stages = Vec::with_capacity(5);

    // 1. The file's bytes entered the kernel through do_sendfile.
    stages.push(Stage {
        stage: 1,
        name: "sendfile",
        pass: body > 0 && n.sendfile_bytes == body,
        detail: if n.sendfile_bytes == body && body > 0 {
            format!("{body} file bytes entered the kernel through do_sendfile (= bytes served)")
        } else if n.sendfile_bytes == 0 {
            format!(
                "do_sendfile moved 0 bytes: the server wrote its {body} body bytes from user memory"
            )
        } else {
            format!(
                "do_sendfile moved {} bytes, the server served {body}",
                n.sendfile_bytes
            )
        },
    });

    // 2. The same bytes reached kernel TLS through the splice/sendpage path.
    let probe = n
        .plaintext_probe
        .unwrap_or("tls_sw_sendpage/tls_sw_sendmsg");
    let s2_pass =
        body > 0 && n.splice_plaintext_bytes == body && n.splice_calls_outside_sendfile == 0;
    stages.push(Stage {
        stage: 2,
        name: "kernel TLS",
        pass: s2_pass,
        detail: if s2_pass {
            format!(
                "{body} bytes reached {probe}{} on the splice path, all inside do_sendfile",
                if probe == "tls_sw_sendmsg" { " (MSG_SPLICE_PAGES)" } else { "" }
            )
        } else if n.tls_sockets == 0 && n.user_tcp_payload_bytes >= body && body > 0 {
            format!(
                "no byte reached kernel TLS: {} bytes went through tcp_sendmsg from user space (user-space TLS encrypts in the process)",
                n.user_tcp_payload_bytes
            )
        } else if n.tls_sockets == 0 {
            "no byte reached kernel TLS: the connection was not encrypted by the kernel"
                .to_string()
        } else if n.write_plaintext_bytes > served.header_bytes + alerts {
            format!(
                "the body reached kernel TLS through write() from user memory ({} bytes into tls_sw_sendmsg without MSG_SPLICE_PAGES), not the splice path",
                n.write_plaintext_bytes
            )
        } else if n.splice_calls_outside_sendfile > 0 {
            format!(
                "{} splice-path calls were not inside do_sendfile",
                n.splice_calls_outside_sendfile
            )
        } else {
            format!(
                "{} bytes on the splice path, expected {body}",
                n.splice_plaintext_bytes
            )
        },
    });

    // 3. Ciphertext left through TCP with the expected record overhead.
    let plaintext_all = n.splice_plaintext_bytes + n.write_plaintext_bytes;
    let push = n
        .push_probe
        .unwrap_or("do_tcp_sendpages/tcp_sendmsg_locked");
    let min_records = body.div_ceil(16 * 1024);
    let (s3_pass, s3_detail) = match n.record_overhead {
        _ if n.tls_sockets == 0 => (
            false,
            "no kernel TLS socket: no ciphertext was pushed by the kernel".to_string(),
        ),
        None => (
            false,
            "the negotiated TLS version/cipher is unknown: cannot check the record overhead"
                .to_string(),
        ),
        Some(o) => {
            let expect = plaintext_all + n.records * o;
            // The last close_notify may never leave: when the client has already closed,
            // the kernel's push of that 2-byte alert record fails. Only whole alert records
            // may be missing, and no more of them than were written.
            let deficit = expect.saturating_sub(n.ciphertext_bytes);
            let alert_wire = 2 + o;
            let whole_records = deficit % alert_wire == 0;
            n.unpushed_alerts = if whole_records {
                deficit / alert_wire
            } else {
                0
            };
            let ok = n.ciphertext_bytes > 0
                && n.ciphertext_bytes <= expect
                && whole_records
                && n.unpushed_alerts <= n.alert_records
                && n.records >= min_records;
            let detail = if ok {
                let unpushed = if n.unpushed_alerts > 0 {
                    format!(
                        " ({} close_notify alert record(s) not pushed: the peer had closed)",
                        n.unpushed_alerts
                    )
                } else {
                    String::new()
                };
                format!(
                    "{} bytes left through {push} = {plaintext_all} plaintext + {} records x {o}{unpushed}",
                    n.ciphertext_bytes, n.records
                )
            } else if n.ciphertext_bytes == 0 {
                format!("no ciphertext seen at {push}")
            } else {
                format!(
                    "{} bytes left through {push}, expected {plaintext_all} plaintext + {} records x {o} = {expect} (at least {min_records} records)",
                    n.ciphertext_bytes, n.records
                )
            };
            (ok, detail)
        }
    };
    stages.push(Stage {
        stage: 3,
        name: "ciphertext",
        pass: s3_pass,
        detail: s3_detail,
    });

    // 4. No payload through a user-space write path of the server.
    let write_payload = n
        .write_plaintext_bytes
        .saturating_sub(served.header_bytes + alerts);
    let s4_pass = n.user_tcp_payload_bytes == 0 && write_payload == 0 && n.tls_sockets > 0;
    stages.push(Stage {
        stage: 4,
        name: "no user copy",
        pass: s4_pass,
        detail: if s4_pass {
            format!(
                "0 payload bytes through tcp_sendmsg or write(); only {} HTTP header bytes were written and {} handshake bytes sent before kTLS",
                served.header_bytes, n.handshake_bytes
            )
        } else if n.user_tcp_payload_bytes > 0 {
            format!(
                "{} payload bytes went through tcp_sendmsg from user space",
                n.user_tcp_payload_bytes
            )
        } else if write_payload > 0 {
            format!("{write_payload} payload bytes were copied from user memory into kernel TLS (write())")
        } else {
            "no kernel TLS: the bytes were sent unencrypted".to_string()
        },
    });

    // 5. The client decrypted and matched every byte.
    let s5_pass = served.client_verified
        && served.client_body_bytes == body
        && served.client_requests == served.requests
        && served.client_errors.is_empty();
    stages.push(Stage {
        stage: 5,
        name: "client",
        pass: s5_pass,
        detail: if s5_pass {
            format!(
                "{} responses ({} bytes) received, decrypted and matched byte for byte (SHA-256)",
                served.client_requests, served.client_body_bytes
            )
        } else if let Some(e) = served.client_errors.first() {
            format!("the client failed: {e}")
        } else {
            format!(
                "the client checked {} of {} responses, {} of {body} bytes",
                served.client_requests, served.requests, served.client_body_bytes
            )
        },
    });

    Verdict {
        pass: stages.iter().all(|s| s.pass),
        path,
        stages,
        numbers: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktls_trace_common::msg;

    const SOCK: u64 = 0xabc;
    const BODY: u64 = 100_000;
    const HEAD: u64 = 120;

    fn ev(probe: Probe, ts: u64, bytes: u64, parent: Option<Probe>) -> TraceEvent {
        TraceEvent {
            ts_ns: ts,
            pid: 10,
            tid: 10,
            comm: "ktls-trace".into(),
            probe,
            bytes,
            ret: Some(bytes as i64),
            latency_ns: Some(1),
            sock: Some(SOCK),
            flags: Some(0),
            fds: None,
            parent,
            root: parent,
            head: None,
        }
    }

    fn served(version: Option<&str>) -> Served {
        Served {
            body_bytes: BODY,
            header_bytes: HEAD,
            requests: 1,
            connections: 1,
            tls_version: version.map(String::from),
            cipher: version.map(|_| "aes-128-gcm".to_string()),
            client_verified: true,
            client_body_bytes: BODY,
            client_requests: 1,
            client_errors: vec![],
        }
    }

    /// Handshake through tcp_sendmsg, then a kTLS head write, then sendfile through
    /// the 6.12 splice path, then close_notify; records of 16 KiB, 22 bytes each.
    fn ktls_sendfile_612() -> Vec<TraceEvent> {
        let mut v = vec![ev(Probe::TcpSendmsg, 10, 3000, None)];
        let mut hs_push = ev(Probe::TcpSendmsgLocked, 11, 3000, Some(Probe::TcpSendmsg));
        hs_push.ts_ns = 10;
        v.push(hs_push);
        v.push(ev(Probe::TlsSwSendmsg, 100, HEAD, None));
        v.push(ev(Probe::TlsPushRecord, 101, 0, Some(Probe::TlsSwSendmsg)));
        v.push(ev(
            Probe::TcpSendmsgLocked,
            102,
            HEAD + 22,
            Some(Probe::TlsSwSendmsg),
        ));
        let records = BODY.div_ceil(16384);
        let mut left = BODY;
        for i in 0..records {
            let chunk = left.min(16384);
            left -= chunk;
            let mut s = ev(
                Probe::TlsSwSendmsg,
                200 + i * 10,
                chunk,
                Some(Probe::DoSendfile),
            );
            s.flags = Some(msg::MSG_SPLICE_PAGES | msg::MSG_MORE);
            v.push(s);
            v.push(ev(
                Probe::TlsPushRecord,
                201 + i * 10,
                0,
                Some(Probe::TlsSwSendmsg),
            ));
            v.push(ev(
                Probe::TcpSendmsgLocked,
                202 + i * 10,
                chunk + 22,
                Some(Probe::TlsSwSendmsg),
            ));
        }
        v.push(ev(Probe::DoSendfile, 1000, BODY, None));
        v.push(ev(Probe::TlsSwSendmsg, 2000, 2, None));
        v.push(ev(Probe::TlsPushRecord, 2001, 0, Some(Probe::TlsSwSendmsg)));
        // The alert record flushed later by the kernel's tx worker: no parent, other pid.
        let mut late = ev(Probe::TcpSendmsgLocked, 2002, 2 + 22, None);
        late.pid = 99;
        v.push(late);
        v
    }

    #[test]
    fn ktls_sendfile_passes_all_five_stages() {
        let v = judge(&ktls_sendfile_612(), &served(Some("1.3")));
        assert!(v.pass, "{:#?}", v);
        assert_eq!(v.path, Path::KtlsSendfile);
        assert_eq!(v.numbers.handshake_bytes, 3000);
        assert_eq!(v.numbers.records, BODY.div_ceil(16384) + 2);
        assert!(
            v.stages[1].detail.contains("MSG_SPLICE_PAGES"),
            "{}",
            v.stages[1].detail
        );
    }

    #[test]
    fn wrong_record_overhead_fails_stage_3() {
        // Judged as TLS 1.2 AES-GCM (29 bytes per record): the 22-byte records do not add up.
        let v = judge(&ktls_sendfile_612(), &served(Some("1.2")));
        assert!(!v.pass);
        assert!(!v.stages[2].pass, "{:#?}", v.stages[2]);
        assert!(v.stages.iter().enumerate().all(|(i, s)| i == 2 || s.pass));
    }

    #[test]
    fn an_unpushed_final_alert_is_tolerated_but_a_lost_record_is_not() {
        // The late alert record never left (the peer had closed): still a pass.
        let mut events = ktls_sendfile_612();
        events.retain(|e| !(e.probe == Probe::TcpSendmsgLocked && e.pid == 99));
        let v = judge(&events, &served(Some("1.3")));
        assert!(v.pass, "{:#?}", v.stages[2]);
        assert_eq!(v.numbers.unpushed_alerts, 1);
        assert!(v.stages[2].detail.contains("not pushed"));
        // A body record missing from the wire is a failure, even if it happens to be as
        // long as an alert record would be... here a whole 16 KiB record.
        let mut events = ktls_sendfile_612();
        if let Some(i) = events
            .iter()
            .position(|e| e.probe == Probe::TcpSendmsgLocked && e.bytes == 16384 + 22)
        {
            events.remove(i);
        }
        assert!(!judge(&events, &served(Some("1.3"))).stages[2].pass);
    }

    #[test]
    fn a_lost_byte_of_ciphertext_fails_stage_3() {
        let mut events = ktls_sendfile_612();
        if let Some(e) = events
            .iter_mut()
            .rev()
            .find(|e| e.probe == Probe::TcpSendmsgLocked)
        {
            e.ret = Some(e.ret.unwrap_or(0) - 1);
        }
        assert!(!judge(&events, &served(Some("1.3"))).stages[2].pass);
    }

    #[test]
    fn ktls_write_is_not_zero_copy() {
        let mut v = vec![ev(Probe::TlsSwSendmsg, 100, HEAD, None)];
        v.push(ev(Probe::TlsSwSendmsg, 200, BODY, None));
        for i in 0..BODY.div_ceil(16384) + 1 {
            v.push(ev(
                Probe::TlsPushRecord,
                300 + i,
                0,
                Some(Probe::TlsSwSendmsg),
            ));
        }
        v.push(ev(
            Probe::TcpSendmsgLocked,
            400,
            HEAD + BODY + 22 * (BODY.div_ceil(16384) + 1),
            Some(Probe::TlsSwSendmsg),
        ));
        let verdict = judge(&v, &served(Some("1.3")));
        assert_eq!(verdict.path, Path::KtlsWrite);
        assert!(!verdict.pass);
        assert!(!verdict.stages[0].pass && !verdict.stages[1].pass && !verdict.stages[3].pass);
        assert!(
            verdict.stages[2].pass,
            "ciphertext still adds up: {:#?}",
            verdict.stages[2]
        );
        assert!(verdict.stages[1].detail.contains("write()"));
    }

    #[test]
    fn userspace_tls_goes_through_tcp_sendmsg() {
        let v = vec![
            ev(Probe::TcpSendmsg, 10, 3000, None),
            ev(Probe::TcpSendmsg, 100, BODY + 2000, None),
        ];
        let verdict = judge(&v, &served(Some("1.3")));
        assert_eq!(verdict.path, Path::UserspaceTls);
        assert!(!verdict.pass);
        assert!(
            verdict.stages[1]
                .detail
                .contains("tcp_sendmsg from user space")
        );
        assert!(verdict.stages[3].detail.contains("tcp_sendmsg"));
        assert!(verdict.stages[4].pass);
    }

    #[test]
    fn plain_sendfile_is_zero_copy_but_not_encrypted() {
        let v = vec![
            ev(Probe::TcpSendmsg, 10, HEAD, None),
            ev(Probe::DoTcpSendpages, 50, BODY, Some(Probe::DoSendfile)),
            ev(Probe::DoSendfile, 100, BODY, None),
        ];
        let mut s = served(None);
        s.cipher = None;
        let verdict = judge(&v, &s);
        assert_eq!(verdict.path, Path::PlainSendfile);
        assert!(verdict.stages[0].pass);
        assert!(!verdict.stages[1].pass && !verdict.stages[2].pass);
        assert!(
            verdict.stages[1].detail.contains("not encrypted"),
            "{}",
            verdict.stages[1].detail
        );
    }

    #[test]
    fn plain_sendfile_on_6_12_goes_through_tcp_sendmsg_inside_sendfile() {
        let v = vec![
            ev(Probe::TcpSendmsg, 10, HEAD, None),
            ev(Probe::TcpSendmsgLocked, 11, HEAD, Some(Probe::TcpSendmsg)),
            ev(Probe::TcpSendmsg, 50, BODY, Some(Probe::DoSendfile)),
            ev(Probe::TcpSendmsgLocked, 51, BODY, Some(Probe::TcpSendmsg)),
            ev(Probe::DoSendfile, 100, BODY, None),
        ];
        let mut s = served(None);
        s.cipher = None;
        let verdict = judge(&v, &s);
        assert_eq!(verdict.path, Path::PlainSendfile);
        assert_eq!(verdict.numbers.user_tcp_payload_bytes, HEAD);
    }

    #[test]
    fn client_failure_fails_stage_5() {
        let mut s = served(Some("1.3"));
        s.client_verified = false;
        s.client_errors = vec!["content mismatch".into()];
        let v = judge(&ktls_sendfile_612(), &s);
        assert!(!v.stages[4].pass);
        assert!(v.stages[4].detail.contains("content mismatch"));
    }

    #[test]
    fn kernel_6_1_sendpage_path() {
        let mut v = Vec::new();
        v.push(ev(Probe::TlsSwSendmsg, 100, HEAD, None));
        v.push(ev(Probe::TlsPushRecord, 101, 0, Some(Probe::TlsSwSendmsg)));
        v.push(ev(
            Probe::DoTcpSendpages,
            102,
            HEAD + 22,
            Some(Probe::TlsSwSendmsg),
        ));
        let pages = BODY.div_ceil(4096);
        let mut left = BODY;
        for i in 0..pages {
            let chunk = left.min(4096);
            left -= chunk;
            v.push(ev(
                Probe::TlsSwSendpage,
                200 + i,
                chunk,
                Some(Probe::DoSendfile),
            ));
        }
        let records = BODY.div_ceil(16384);
        for i in 0..records {
            v.push(ev(
                Probe::TlsPushRecord,
                900 + i,
                0,
                Some(Probe::TlsSwSendpage),
            ));
        }
        v.push(ev(
            Probe::DoTcpSendpages,
            990,
            BODY + 22 * records,
            Some(Probe::TlsSwSendpage),
        ));
        v.push(ev(Probe::DoSendfile, 1000, BODY, None));
        v.push(ev(Probe::TlsSwSendmsg, 2000, 2, None));
        v.push(ev(Probe::TlsPushRecord, 2001, 0, Some(Probe::TlsSwSendmsg)));
        v.push(ev(
            Probe::DoTcpSendpages,
            2002,
            24,
            Some(Probe::TlsSwSendmsg),
        ));
        let verdict = judge(&v, &served(Some("1.3")));
        assert!(verdict.pass, "{:#?}", verdict);
        assert_eq!(verdict.numbers.plaintext_probe, Some("tls_sw_sendpage"));
        assert_eq!(verdict.numbers.push_probe, Some("do_tcp_sendpages"));
    }

    #[test]
    fn overheads() {
        assert_eq!(record_overhead("1.3", "chacha20-poly1305"), Some(22));
        assert_eq!(record_overhead("1.2", "aes-256-gcm"), Some(29));
        assert_eq!(record_overhead("1.2", "chacha20-poly1305"), Some(21));
        assert_eq!(record_overhead("1.1", "aes-128-gcm"), None);
    }
}
