//! Decoding: ring-buffer bytes -> [`TraceEvent`], and the two ways `trace` prints one
//! (a human line, a JSON object; the JSON schema is documented in docs/event-schema.md).

use ktls_trace_common::{EVENT_SIZE, Event, HEAD_LEN, Probe, has, msg};
use serde::Serialize;

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {EVENT_SIZE} (eBPF object and userspace disagree)")]
    Size(usize),
    #[error("unknown probe id {0}")]
    Probe(u8),
}

/// One completed call, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub probe: Probe,
    pub bytes: u64,
    pub ret: Option<i64>,
    pub latency_ns: Option<u64>,
    pub sock: Option<u64>,
    pub flags: Option<u32>,
    pub fds: Option<(i32, i32)>,
    pub parent: Option<Probe>,
    pub root: Option<Probe>,
    pub head: Option<[u8; HEAD_LEN]>,
}

impl TraceEvent {
    /// Bytes the call really moved: a positive return value (0 for errors).
    pub fn bytes_done(&self) -> u64 {
        match self.ret {
            Some(r) if r > 0 => r as u64,
            _ => 0,
        }
    }

    pub fn is_splice(&self) -> bool {
        self.flags.is_some_and(|f| f & msg::MSG_SPLICE_PAGES != 0)
    }

    /// Did this call run inside `p` (directly or further out)?
    pub fn nested_in(&self, p: Probe) -> bool {
        self.parent == Some(p) || self.root == Some(p)
    }
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<TraceEvent, DecodeError> {
    if buf.len() != EVENT_SIZE {
        return Err(DecodeError::Size(buf.len()));
    }
    // SAFETY: the length is exactly size_of::<Event>() and Event is plain integers and
    // byte arrays without padding (asserted in ktls-trace-common), so any bytes are a
    // valid value; read_unaligned makes no alignment assumption.
    let e: Event = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<Event>()) };
    from_raw(&e)
}

/// Converts the wire struct.
pub fn from_raw(e: &Event) -> Result<TraceEvent, DecodeError> {
    let probe = Probe::from_u8(e.probe).ok_or(DecodeError::Probe(e.probe))?;
    let opt = |bit: u8| e.has & bit != 0;
    let comm_len = e.comm.iter().position(|&c| c == 0).unwrap_or(e.comm.len());
    Ok(TraceEvent {
        ts_ns: e.ts_ns,
        pid: e.pid,
        tid: e.tid,
        comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
        probe,
        bytes: e.bytes,
        ret: opt(has::RET).then_some(e.ret),
        latency_ns: opt(has::LATENCY).then_some(e.latency_ns),
        sock: opt(has::SOCK).then_some(e.sock),
        flags: opt(has::FLAGS).then_some(e.flags),
        fds: opt(has::FDS).then_some((e.fd_out, e.fd_in)),
        parent: Probe::from_u8(e.parent),
        root: Probe::from_u8(e.root),
        head: opt(has::HEAD).then_some(e.head),
    })
}

const FLAG_NAMES: [(u32, &str); 8] = [
    (msg::MSG_SPLICE_PAGES, "MSG_SPLICE_PAGES"),
    (msg::MSG_MORE, "MSG_MORE"),
    (msg::MSG_SENDPAGE_NOTLAST, "MSG_SENDPAGE_NOTLAST"),
    (msg::MSG_DONTWAIT, "MSG_DONTWAIT"),
    (msg::MSG_NOSIGNAL, "MSG_NOSIGNAL"),
    (msg::MSG_EOR, "MSG_EOR"),
    (msg::MSG_ZEROCOPY, "MSG_ZEROCOPY"),
    (msg::MSG_OOB, "MSG_OOB"),
];

/// `MSG_SPLICE_PAGES|MSG_MORE`; unknown bits as hex; empty for 0.
pub fn flag_names(flags: u32) -> String {
    let mut parts = Vec::new();
    let mut rest = flags;
    for (bit, name) in FLAG_NAMES {
        if flags & bit != 0 {
            parts.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join("|")
}

/// Socket ids print as 16 hex digits.
pub fn sock_hex(sock: u64) -> String {
    format!("{sock:016x}")
}

/// The JSON form of an event (one object per line; see docs/event-schema.md).
#[derive(Serialize)]
pub struct JsonEvent<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub probe: &'static str,
    pub bytes: u64,
    pub ret: Option<i64>,
    pub latency_ns: Option<u64>,
    pub sock: Option<String>,
    pub flags: Option<String>,
    pub parent: Option<&'static str>,
    pub root: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_fd: Option<i32>,
}

impl<'a> From<&'a TraceEvent> for JsonEvent<'a> {
    fn from(e: &'a TraceEvent) -> Self {
        JsonEvent {
            ts_ns: e.ts_ns,
            pid: e.pid,
            tid: e.tid,
            comm: &e.comm,
            probe: e.probe.name(),
            bytes: e.bytes,
            ret: e.ret,
            latency_ns: e.latency_ns,
            sock: e.sock.map(sock_hex),
            flags: e.flags.map(flag_names),
            parent: e.parent.map(Probe::name),
            root: e.root.map(Probe::name),
            out_fd: e.fds.map(|f| f.0),
            in_fd: e.fds.map(|f| f.1),
        }
    }
}

/// Human-readable microseconds.
pub fn fmt_latency(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}us", ns as f64 / 1e3)
    }
}

/// One human-readable line; `t0` is the ts_ns the trace started at.
pub fn human_line(e: &TraceEvent, t0: u64) -> String {
    let secs = e.ts_ns.saturating_sub(t0) as f64 / 1e9;
    let mut s = format!(
        "{secs:>10.6} {:>7}/{:<7} {:<15} {:<19} bytes={}",
        e.pid,
        e.tid,
        e.comm,
        e.probe.name(),
        e.bytes
    );
    if let Some(r) = e.ret {
        s.push_str(&format!(" ret={r}"));
    }
    if let Some(l) = e.latency_ns {
        s.push_str(&format!(" lat={}", fmt_latency(l)));
    }
    if let Some((o, i)) = e.fds {
        s.push_str(&format!(" out_fd={o} in_fd={i}"));
    }
    if let Some(k) = e.sock {
        s.push_str(&format!(" sock={}", sock_hex(k)));
    }
    if let Some(f) = e.flags.filter(|f| *f != 0) {
        s.push_str(&format!(" flags={}", flag_names(f)));
    }
    if let Some(p) = e.parent {
        s.push_str(&format!(" in={}", p.name()));
        if let Some(r) = e.root.filter(|r| *r != p) {
            s.push_str(&format!("<{}", r.name()));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktls_trace_common::{COMM_LEN, sock_id};

    fn raw() -> Event {
        let mut comm = [0u8; COMM_LEN];
        comm[..5].copy_from_slice(b"nginx");
        Event {
            ts_ns: 1_000,
            latency_ns: 2_500,
            bytes: 65_536,
            ret: 65_536,
            sock: sock_id(0xffff_8880_1234_5600, 7),
            pid: 42,
            tid: 43,
            flags: msg::MSG_SPLICE_PAGES | msg::MSG_MORE,
            fd_out: 0,
            fd_in: 0,
            probe: Probe::TlsSwSendmsg as u8,
            parent: Probe::DoSendfile as u8,
            root: Probe::DoSendfile as u8,
            has: has::RET | has::LATENCY | has::SOCK | has::FLAGS,
            comm,
            head: [0; HEAD_LEN],
        }
    }

    fn bytes_of(e: &Event) -> Vec<u8> {
        // SAFETY: Event is plain old data without padding.
        unsafe { std::slice::from_raw_parts((e as *const Event).cast::<u8>(), EVENT_SIZE) }.to_vec()
    }

    #[test]
    fn decodes_a_record() {
        let r = raw();
        let e = decode(&bytes_of(&r)).unwrap();
        assert_eq!(e.comm, "nginx");
        assert_eq!(e.probe, Probe::TlsSwSendmsg);
        assert_eq!(e.parent, Some(Probe::DoSendfile));
        assert_eq!(e.ret, Some(65_536));
        assert_eq!(e.fds, None);
        assert!(e.is_splice());
        assert_eq!(e.bytes_done(), 65_536);
        assert!(e.nested_in(Probe::DoSendfile));
    }

    #[test]
    fn optional_fields_follow_has_bits() {
        let mut r = raw();
        r.has = 0;
        r.parent = Probe::NONE;
        r.root = Probe::NONE;
        let e = decode(&bytes_of(&r)).unwrap();
        assert_eq!(
            (e.ret, e.latency_ns, e.sock, e.flags),
            (None, None, None, None)
        );
        assert_eq!(e.parent, None);
        assert_eq!(e.bytes_done(), 0);
    }

    #[test]
    fn rejects_wrong_size_and_probe() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        let mut r = raw();
        r.probe = 200;
        assert_eq!(decode(&bytes_of(&r)), Err(DecodeError::Probe(200)));
    }

    #[test]
    fn flags_are_named() {
        assert_eq!(
            flag_names(msg::MSG_SPLICE_PAGES | msg::MSG_MORE),
            "MSG_SPLICE_PAGES|MSG_MORE"
        );
        assert_eq!(flag_names(0), "");
        assert_eq!(
            flag_names(0x10000000 | msg::MSG_MORE),
            "MSG_MORE|0x10000000"
        );
    }

    #[test]
    fn json_has_the_documented_keys() {
        let e = decode(&bytes_of(&raw())).unwrap();
        let v = serde_json::to_value(JsonEvent::from(&e)).unwrap();
        for key in [
            "ts_ns",
            "pid",
            "tid",
            "comm",
            "probe",
            "bytes",
            "ret",
            "latency_ns",
            "sock",
            "flags",
            "parent",
            "root",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["probe"], "tls_sw_sendmsg");
        assert_eq!(v["flags"], "MSG_SPLICE_PAGES|MSG_MORE");
        assert_eq!(v["parent"], "do_sendfile");
        assert_eq!(v["sock"].as_str().unwrap().len(), 16);
        assert!(v.get("out_fd").is_none());
    }

    #[test]
    fn human_line_mentions_nesting() {
        let e = decode(&bytes_of(&raw())).unwrap();
        let line = human_line(&e, 0);
        assert!(line.contains("tls_sw_sendmsg"), "{line}");
        assert!(line.contains("in=do_sendfile"), "{line}");
        assert!(line.contains("flags=MSG_SPLICE_PAGES|MSG_MORE"), "{line}");
        assert!(line.contains("lat=2.5us"), "{line}");
    }

    #[test]
    fn socket_ids_are_stable_and_distinct() {
        assert_eq!(sock_id(0x1000, 5), sock_id(0x1000, 5));
        assert_ne!(sock_id(0x1000, 5), sock_id(0x1040, 5));
        assert_ne!(sock_id(0x1000, 5), 0x1000);
    }
}
