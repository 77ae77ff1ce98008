//! The verdict of `verify`: pure code from the traced events of the server process (each
//! classified by [`Classifier`]) and the two load reports, to five stages and the path the
//! payload took. Unit-tested with synthetic event streams for each path, and with streams
//! recorded on real kernels (`replay.rs`).

use std::collections::BTreeMap;

use ktls_trace_common::Probe;
use serde::Serialize;

use crate::{
    classify::{Classifier, Contribution, Path, PathBytes, Rules},
    event::TraceEvent,
    tls::{MAX_RECORD_PAYLOAD, TlsParams},
};

/// What the load side reported (the parts the judge needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Served {
    /// File bytes the server sent in bodies.
    pub body_bytes: u64,
    /// HTTP response-head bytes the server wrote.
    pub header_bytes: u64,
    pub requests: u64,
    /// What the server negotiated, None without TLS.
    pub tls: Option<TlsParams>,
    /// The client decrypted everything and every body matched.
    pub client_verified: bool,
    pub client_body_bytes: u64,
    pub client_requests: u64,
    pub client_errors: Vec<String>,
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
    /// Payload bytes per path, as classified.
    pub payload: PathBytes,
    pub sendfile_bytes: u64,
    pub splice_plaintext_bytes: u64,
    pub splice_calls_outside_sendfile: u64,
    pub write_plaintext_bytes: u64,
    /// 2-byte writes into kTLS: TLS alerts (close_notify), not payload.
    pub alert_records: u64,
    /// Alert records the kernel could not push (the peer had already closed).
    pub unpushed_alerts: u64,
    pub ciphertext_bytes: u64,
    /// TLS records kernel TLS closed.
    pub records: Option<u64>,
    /// "sequence number" (counted by the kernel TLS record sequence number) or "derived"
    /// (from ciphertext minus plaintext, where the kernel does not tell).
    pub records_from: Option<&'static str>,
    pub record_overhead: Option<u64>,
    /// Version and cipher as kernel TLS reported them.
    pub kernel_tls: Option<String>,
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
    /// The path most payload took (None: no payload seen).
    pub path: Option<Path>,
    pub stages: Vec<Stage>,
    pub numbers: Numbers,
}

/// Everything seen on one socket.
#[derive(Debug, Default)]
struct Sock {
    /// When kernel TLS took it over (start of its first kTLS send).
    ktls_since: Option<u64>,
    params: Option<TlsParams>,
    plaintext: u64,
    ciphertext: u64,
    records: u64,
    sends_without_records: u64,
    alerts: u64,
    /// User-space sends through tcp_sendmsg: (when they started, bytes).
    user_sends: Vec<(u64, u64)>,
}

/// Folds the classified events of one traced `load --server-only` run.
#[derive(Debug, Default)]
pub struct Judge {
    classifier: Classifier,
    n: Numbers,
    socks: BTreeMap<u64, Sock>,
}

impl Judge {
    pub fn new(rules: Rules) -> Judge {
        Judge {
            classifier: Classifier::new(rules),
            ..Judge::default()
        }
    }

    pub fn ingest(&mut self, e: &TraceEvent) {
        let c = self.classifier.classify(e);
        self.fold(e, &c);
    }

    fn fold(&mut self, e: &TraceEvent, c: &Contribution) {
        let n = &mut self.n;
        let start = e.ts_ns.saturating_sub(e.latency_ns.unwrap_or(0));
        if let Some(b) = c.sendfile {
            n.sendfile_bytes += b;
        }
        if let Some((path, bytes)) = c.payload {
            n.payload.add(path, bytes);
        }
        if let Some(k) = c.ktls {
            let s = self.socks.entry(k.sock).or_default();
            s.ktls_since = Some(s.ktls_since.map_or(start, |t| t.min(start)));
            s.params = k.params.or(s.params);
            let plain = c.payload.map_or(0, |(_, b)| b) + c.control;
            s.plaintext += plain;
            s.alerts += c.control / 2;
            n.alert_records += c.control / 2;
            match c.records {
                Some(r) => s.records += r,
                None => s.sends_without_records += 1,
            }
            if let Some((_, bytes)) = c.payload {
                if k.splice {
                    n.splice_plaintext_bytes += bytes;
                    n.plaintext_probe.get_or_insert(e.probe.name());
                    if !c.in_sendfile {
                        n.splice_calls_outside_sendfile += 1;
                    }
                } else {
                    n.write_plaintext_bytes += bytes;
                }
            }
        }
        if c.ciphertext > 0
            && let Some(sock) = e.sock
        {
            self.socks.entry(sock).or_default().ciphertext += c.ciphertext;
            n.ciphertext_bytes += c.ciphertext;
            n.push_probe.get_or_insert(e.probe.name());
        }
        if let (Some((Path::UserspaceTls | Path::Plain, bytes)), Some(sock)) = (c.payload, e.sock)
            && e.probe == Probe::TcpSendmsg
        {
            self.socks
                .entry(sock)
                .or_default()
                .user_sends
                .push((start, bytes));
        }
    }

    /// The verdict, given what the load reported.
    pub fn verdict(mut self, served: &Served) -> Verdict {
        let mut n = std::mem::take(&mut self.n);
        let ktls: Vec<&Sock> = self
            .socks
            .values()
            .filter(|s| s.ktls_since.is_some())
            .collect();
        n.tls_sockets = ktls.len();
        for s in self.socks.values() {
            for &(at, bytes) in &s.user_sends {
                match s.ktls_since {
                    // Before kTLS took the socket over: the user-space TLS handshake.
                    Some(since) if at <= since => n.handshake_bytes += bytes,
                    _ => n.user_tcp_payload_bytes += bytes,
                }
            }
        }
        let kernel_params = ktls.iter().find_map(|s| s.params);
        n.kernel_tls = kernel_params.map(|p| p.to_string());
        n.record_overhead = kernel_params
            .or(served.tls)
            .and_then(|p| p.record_overhead());
        let body = served.body_bytes;
        let path = n.payload.main_path();
        let stages = vec![
            stage1(&n, body),
            stage2(&n, served),
            stage3(&mut n, &ktls, served),
            stage4(&n, served),
            stage5(served),
        ];
        Verdict {
            pass: stages.iter().all(|s| s.pass),
            path,
            stages,
            numbers: n,
        }
    }
}

/// Stage 1, the file's bytes entered the kernel through sendfile.
fn stage1(n: &Numbers, body: u64) -> Stage {
    let pass = body > 0 && n.sendfile_bytes == body;
    Stage {
        stage: 1,
        name: "sendfile",
        pass,
        detail: if pass {
            format!("{body} file bytes entered the kernel through sendfile (= bytes served)")
        } else if n.sendfile_bytes == 0 {
            format!(
                "sendfile moved 0 bytes: the server wrote its {body} body bytes from user memory"
            )
        } else {
            format!(
                "sendfile moved {} bytes, the server served {body}",
                n.sendfile_bytes
            )
        },
    }
}

/// Stage 2, the same bytes reached kernel TLS through the splice path.
fn stage2(n: &Numbers, served: &Served) -> Stage {
    let body = served.body_bytes;
    let probe = n
        .plaintext_probe
        .unwrap_or("tls_sw_sendpage/tls_sw_sendmsg");
    let pass = body > 0 && n.splice_plaintext_bytes == body && n.splice_calls_outside_sendfile == 0;
    let detail = if pass {
        format!(
            "{body} bytes reached {probe}{} on the splice path, all inside sendfile",
            if probe == Probe::TlsSwSendmsg.name() {
                " (MSG_SPLICE_PAGES)"
            } else {
                ""
            }
        )
    } else if n.tls_sockets == 0 && n.user_tcp_payload_bytes >= body && body > 0 {
        format!(
            "no byte reached kernel TLS: {} bytes went through tcp_sendmsg from user space (user-space TLS encrypts in the process)",
            n.user_tcp_payload_bytes
        )
    } else if n.tls_sockets == 0 {
        "no byte reached kernel TLS: the connection was not encrypted by the kernel".to_string()
    } else if n.write_plaintext_bytes > served.header_bytes {
        format!(
            "the body reached kernel TLS through write() from user memory ({} bytes into tls_sw_sendmsg without MSG_SPLICE_PAGES), not the splice path",
            n.write_plaintext_bytes
        )
    } else if n.splice_calls_outside_sendfile > 0 {
        format!(
            "{} splice-path calls were not inside sendfile",
            n.splice_calls_outside_sendfile
        )
    } else {
        format!(
            "{} bytes on the splice path, expected {body}",
            n.splice_plaintext_bytes
        )
    };
    Stage {
        stage: 2,
        name: "kernel TLS",
        pass,
        detail,
    }
}

/// Stage 3, ciphertext left through TCP with the expected record overhead: per kTLS socket,
/// `ciphertext = plaintext + records x overhead`.
///
/// Records are the kernel's count (its record sequence number) where it tells, else
/// derived from the same equation. The last close_notify may never leave (the client had
/// closed): only whole alert records may be missing, and no more of them than were written.
fn stage3(n: &mut Numbers, ktls: &[&Sock], served: &Served) -> Stage {
    let fail = |detail: String| Stage {
        stage: 3,
        name: "ciphertext",
        pass: false,
        detail,
    };
    if ktls.is_empty() {
        return fail("no kernel TLS socket: no ciphertext was pushed by the kernel".into());
    }
    let push = n
        .push_probe
        .unwrap_or("do_tcp_sendpages/tcp_sendmsg_locked");
    let plaintext: u64 = ktls.iter().map(|s| s.plaintext).sum();
    let min_records = served.body_bytes.div_ceil(MAX_RECORD_PAYLOAD);
    let exact = ktls.iter().all(|s| s.sends_without_records == 0);
    let mut records = 0u64;
    let mut unpushed = 0u64;
    for s in ktls {
        let Some(o) = s.params.or(served.tls).and_then(|p| p.record_overhead()) else {
            return fail(
                "the negotiated TLS version/cipher is unknown: cannot check the record overhead"
                    .into(),
            );
        };
        let alert_wire = 2 + o;
        let (r, missing) = if exact {
            let expect = s.plaintext + s.records * o;
            let deficit = expect.saturating_sub(s.ciphertext);
            if s.ciphertext > expect || deficit % alert_wire != 0 || deficit / alert_wire > s.alerts
            {
                return fail(format!(
                    "{} bytes left through {push}, expected {} plaintext + {} records x {o} = {expect}",
                    s.ciphertext, s.plaintext, s.records
                ));
            }
            (s.records, deficit / alert_wire)
        } else {
            // records x o = ciphertext + missing alerts x (2 + o) - plaintext
            match (0..=s.alerts).find_map(|k| {
                let wire = s.ciphertext + k * alert_wire;
                (wire >= s.plaintext && (wire - s.plaintext) % o == 0)
                    .then(|| ((wire - s.plaintext) / o, k))
            }) {
                Some(found) => found,
                None => {
                    return fail(format!(
                        "{} bytes left through {push} for {} bytes of plaintext: not a whole number of {o}-byte record overheads",
                        s.ciphertext, s.plaintext
                    ));
                }
            }
        };
        records += r;
        unpushed += missing;
    }
    n.records = Some(records);
    n.records_from = Some(if exact { "sequence number" } else { "derived" });
    n.unpushed_alerts = unpushed;
    let o = n.record_overhead.unwrap_or(0);
    if n.ciphertext_bytes == 0 {
        return fail(format!("no ciphertext seen at {push}"));
    }
    if records < min_records {
        return fail(format!(
            "{records} records for {} body bytes: at least {min_records} were needed",
            served.body_bytes
        ));
    }
    let unpushed_words = if unpushed > 0 {
        format!(" ({unpushed} close_notify alert record(s) not pushed: the peer had closed)")
    } else {
        String::new()
    };
    let how = if exact {
        "counted by kernel TLS"
    } else {
        "derived"
    };
    Stage {
        stage: 3,
        name: "ciphertext",
        pass: true,
        detail: format!(
            "{} bytes left through {push} = {plaintext} plaintext + {records} records ({how}) x {o}{unpushed_words}",
            n.ciphertext_bytes
        ),
    }
}

/// Stage 4, no payload through a user-space write path of the server.
fn stage4(n: &Numbers, served: &Served) -> Stage {
    let write_payload = n.write_plaintext_bytes.saturating_sub(served.header_bytes);
    let pass = n.user_tcp_payload_bytes == 0 && write_payload == 0 && n.tls_sockets > 0;
    Stage {
        stage: 4,
        name: "no user copy",
        pass,
        detail: if pass {
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
            format!(
                "{write_payload} payload bytes were copied from user memory into kernel TLS (write())"
            )
        } else {
            "no kernel TLS: the bytes were sent unencrypted".to_string()
        },
    }
}

/// Stage 5, the client decrypted and matched every byte.
fn stage5(served: &Served) -> Stage {
    let pass = served.client_verified
        && served.client_body_bytes == served.body_bytes
        && served.client_requests == served.requests
        && served.client_errors.is_empty();
    Stage {
        stage: 5,
        name: "client",
        pass,
        detail: if pass {
            format!(
                "{} responses ({} bytes) received, decrypted and matched byte for byte (SHA-256)",
                served.client_requests, served.client_body_bytes
            )
        } else if let Some(e) = served.client_errors.first() {
            format!("the client failed: {e}")
        } else {
            format!(
                "the client checked {} of {} responses, {} of {} bytes",
                served.client_requests,
                served.requests,
                served.client_body_bytes,
                served.body_bytes
            )
        },
    }
}

/// Judges a whole list of events (tests, replays).
#[cfg(test)]
pub fn judge(events: &[TraceEvent], served: &Served) -> Verdict {
    let mut j = Judge::new(Rules::default());
    for e in events {
        j.ingest(e);
    }
    j.verdict(served)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Comm, TlsWire},
        tls::{Cipher, TlsVersion},
    };
    use ktls_trace_common::msg;

    const SOCK: u64 = 0xabc;
    const BODY: u64 = 100_000;
    const HEAD: u64 = 120;
    const TLS13: TlsWire = TlsWire {
        version: 0x0304,
        cipher: 51,
    };

    fn ev(probe: Probe, ts: u64, bytes: u64, parent: Option<Probe>) -> TraceEvent {
        TraceEvent {
            ts_ns: ts,
            pid: 10,
            tid: 10,
            comm: Comm::new("ktls-trace"),
            process: None,
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
            records: None,
            tls: None,
        }
    }

    /// A kTLS send that closed `records` records.
    fn ktls(mut e: TraceEvent, records: u32) -> TraceEvent {
        e.records = Some(records);
        e.tls = Some(TLS13);
        e
    }

    fn params(version: TlsVersion) -> TlsParams {
        TlsParams {
            version,
            cipher: Cipher::Aes128Gcm,
        }
    }

    fn served(tls: Option<TlsParams>) -> Served {
        Served {
            body_bytes: BODY,
            header_bytes: HEAD,
            requests: 1,
            tls,
            client_verified: true,
            client_body_bytes: BODY,
            client_requests: 1,
            client_errors: vec![],
        }
    }

    /// Handshake through tcp_sendmsg, then a kTLS head write, then sendfile through
    /// the 6.12 splice path, then close_notify; records of 16 KiB, 22 bytes each.
    fn ktls_sendfile_612() -> Vec<TraceEvent> {
        let mut hs = ev(Probe::TcpSendmsg, 10, 3000, None);
        hs.head = Some([0x16, 3, 3, 0, 0x7a, 0, 0, 0]);
        let mut v = vec![hs];
        let mut hs_push = ev(Probe::TcpSendmsgLocked, 11, 3000, Some(Probe::TcpSendmsg));
        hs_push.ts_ns = 10;
        v.push(hs_push);
        v.push(ev(
            Probe::TcpSendmsgLocked,
            102,
            HEAD + 22,
            Some(Probe::TlsSwSendmsg),
        ));
        v.push(ktls(ev(Probe::TlsSwSendmsg, 103, HEAD, None), 1));
        let records = BODY.div_ceil(16384);
        let mut left = BODY;
        for i in 0..records {
            let chunk = left.min(16384);
            left -= chunk;
            v.push(ev(
                Probe::TcpSendmsgLocked,
                202 + i * 10,
                chunk + 22,
                Some(Probe::TlsSwSendmsg),
            ));
            let mut s = ktls(
                ev(
                    Probe::TlsSwSendmsg,
                    203 + i * 10,
                    chunk,
                    Some(Probe::DoSendfile),
                ),
                1,
            );
            s.flags = Some(msg::MSG_SPLICE_PAGES | msg::MSG_MORE);
            v.push(s);
        }
        v.push(ev(Probe::DoSendfile, 1000, BODY, None));
        v.push(ktls(ev(Probe::TlsSwSendmsg, 2000, 2, None), 1));
        // The alert record flushed later by the kernel's tx worker: no parent, other pid.
        let mut late = ev(Probe::TcpSendmsgLocked, 2002, 2 + 22, None);
        late.pid = 99;
        v.push(late);
        v
    }

    #[test]
    fn ktls_sendfile_passes_all_five_stages() {
        let v = judge(
            &ktls_sendfile_612(),
            &served(Some(params(TlsVersion::Tls13))),
        );
        assert!(v.pass, "{:#?}", v);
        assert_eq!(v.path, Some(Path::KtlsSendfile));
        assert_eq!(v.numbers.handshake_bytes, 3000);
        assert_eq!(v.numbers.records, Some(BODY.div_ceil(16384) + 2));
        assert_eq!(v.numbers.records_from, Some("sequence number"));
        assert_eq!(v.numbers.kernel_tls.as_deref(), Some("TLS 1.3 AES-GCM-128"));
        assert!(
            v.stages[1].detail.contains("MSG_SPLICE_PAGES"),
            "{}",
            v.stages[1].detail
        );
    }

    #[test]
    fn records_are_derived_where_the_kernel_does_not_count_them() {
        let mut events = ktls_sendfile_612();
        for e in &mut events {
            e.records = None;
            e.tls = None;
        }
        let v = judge(&events, &served(Some(params(TlsVersion::Tls13))));
        assert!(v.pass, "{:#?}", v.stages[2]);
        assert_eq!(v.numbers.records, Some(BODY.div_ceil(16384) + 2));
        assert_eq!(v.numbers.records_from, Some("derived"));
        assert!(v.stages[2].detail.contains("(derived)"));
    }

    #[test]
    fn wrong_record_overhead_fails_stage_3() {
        // The load says TLS 1.2 AES-GCM (29 bytes per record) and the kernel does not tell:
        // the 22-byte records do not add up.
        let mut events = ktls_sendfile_612();
        for e in &mut events {
            e.tls = None;
        }
        let v = judge(&events, &served(Some(params(TlsVersion::Tls12))));
        assert!(!v.pass);
        assert!(!v.stages[2].pass, "{:#?}", v.stages[2]);
        assert!(v.stages.iter().enumerate().all(|(i, s)| i == 2 || s.pass));
        // What the kernel says wins over the load's report.
        let v = judge(
            &ktls_sendfile_612(),
            &served(Some(params(TlsVersion::Tls12))),
        );
        assert!(v.pass, "{:#?}", v.stages[2]);
    }

    #[test]
    fn an_unpushed_final_alert_is_tolerated_but_a_lost_record_is_not() {
        let tls = Some(params(TlsVersion::Tls13));
        // The late alert record never left (the peer had closed): still a pass.
        let mut events = ktls_sendfile_612();
        events.retain(|e| !(e.probe == Probe::TcpSendmsgLocked && e.pid == 99));
        let v = judge(&events, &served(tls));
        assert!(v.pass, "{:#?}", v.stages[2]);
        assert_eq!(v.numbers.unpushed_alerts, 1);
        assert!(v.stages[2].detail.contains("not pushed"));
        // A body record missing from the wire is a failure.
        let mut events = ktls_sendfile_612();
        if let Some(i) = events
            .iter()
            .position(|e| e.probe == Probe::TcpSendmsgLocked && e.bytes == 16384 + 22)
        {
            events.remove(i);
        }
        assert!(!judge(&events, &served(tls)).stages[2].pass);
    }

    #[test]
    fn a_lost_byte_of_ciphertext_fails_stage_3() {
        let tls = Some(params(TlsVersion::Tls13));
        for exact in [true, false] {
            let mut events = ktls_sendfile_612();
            if let Some(e) = events
                .iter_mut()
                .rev()
                .find(|e| e.probe == Probe::TcpSendmsgLocked)
            {
                e.ret = Some(e.ret.unwrap_or(0) - 1);
            }
            if !exact {
                events.iter_mut().for_each(|e| e.records = None);
            }
            assert!(
                !judge(&events, &served(tls)).stages[2].pass,
                "exact: {exact}"
            );
        }
    }

    #[test]
    fn ktls_write_is_not_zero_copy() {
        let records = BODY.div_ceil(16384) + 1;
        let v = vec![
            ev(
                Probe::TcpSendmsgLocked,
                90,
                HEAD + BODY + 22 * records,
                Some(Probe::TlsSwSendmsg),
            ),
            ktls(ev(Probe::TlsSwSendmsg, 100, HEAD, None), 0),
            ktls(ev(Probe::TlsSwSendmsg, 200, BODY, None), records as u32),
        ];
        let verdict = judge(&v, &served(Some(params(TlsVersion::Tls13))));
        assert_eq!(verdict.path, Some(Path::KtlsWrite));
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
        let mut hs = ev(Probe::TcpSendmsg, 10, 3000, None);
        hs.head = Some([0x16, 3, 3, 0, 0x7a, 0, 0, 0]);
        let mut body = ev(Probe::TcpSendmsg, 100, BODY + 2000, None);
        body.head = Some([0x17, 3, 3, 0x40, 0x11, 0, 0, 0]);
        let verdict = judge(&[hs, body], &served(Some(params(TlsVersion::Tls13))));
        assert_eq!(verdict.path, Some(Path::UserspaceTls));
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
        let verdict = judge(&v, &served(None));
        assert_eq!(verdict.path, Some(Path::PlainSendfile));
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
        let verdict = judge(&v, &served(None));
        assert_eq!(verdict.path, Some(Path::PlainSendfile));
        assert_eq!(verdict.numbers.user_tcp_payload_bytes, HEAD);
    }

    #[test]
    fn client_failure_fails_stage_5() {
        let mut s = served(Some(params(TlsVersion::Tls13)));
        s.client_verified = false;
        s.client_errors = vec!["content mismatch".into()];
        let v = judge(&ktls_sendfile_612(), &s);
        assert!(!v.stages[4].pass);
        assert!(v.stages[4].detail.contains("content mismatch"));
    }

    #[test]
    fn kernel_6_1_sendpage_path() {
        let mut v = Vec::new();
        v.push(ev(
            Probe::DoTcpSendpages,
            102,
            HEAD + 22,
            Some(Probe::TlsSwSendmsg),
        ));
        v.push(ktls(ev(Probe::TlsSwSendmsg, 103, HEAD, None), 1));
        let pages = BODY.div_ceil(4096);
        let mut left = BODY;
        for i in 0..pages {
            let chunk = left.min(4096);
            left -= chunk;
            // A record closes every 4 pages, and with the last one.
            let closes = u32::from((i + 1) % 4 == 0 || i + 1 == pages);
            if closes == 1 {
                let rec = (i % 4 + 1) * 4096 - if i + 1 == pages { 4096 - chunk } else { 0 };
                v.push(ev(
                    Probe::DoTcpSendpages,
                    200 + i * 2,
                    rec + 22,
                    Some(Probe::TlsSwSendpage),
                ));
            }
            v.push(ktls(
                ev(
                    Probe::TlsSwSendpage,
                    201 + i * 2,
                    chunk,
                    Some(Probe::DoSendfile),
                ),
                closes,
            ));
        }
        v.push(ev(Probe::DoSendfile, 1000, BODY, None));
        v.push(ev(
            Probe::DoTcpSendpages,
            2002,
            24,
            Some(Probe::TlsSwSendmsg),
        ));
        v.push(ktls(ev(Probe::TlsSwSendmsg, 2003, 2, None), 1));
        let verdict = judge(&v, &served(Some(params(TlsVersion::Tls13))));
        assert!(verdict.pass, "{:#?}", verdict);
        assert_eq!(verdict.numbers.plaintext_probe, Some("tls_sw_sendpage"));
        assert_eq!(verdict.numbers.push_probe, Some("do_tcp_sendpages"));
        assert_eq!(verdict.numbers.records, Some(BODY.div_ceil(16384) + 2));
    }
}
