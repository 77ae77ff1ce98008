//! Decoding: ring-buffer bytes -> [`TraceEvent`] (the `has` bits become `Option`s), and the
//! JSON form `trace --json` writes, which reads back into the same events (recorded streams
//! replay through the classifier in tests). Schema: docs/event-schema.md.

use std::fmt;

use ktls_trace_common::{COMM_LEN, EVENT_SIZE, Event, HEAD_LEN, Probe, has, msg};
use serde::{Deserialize, Serialize};

use crate::tls::TlsParams;

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {EVENT_SIZE} (eBPF object and userspace disagree)")]
    Size(usize),
    #[error("unknown probe id {0}")]
    Probe(u8),
}

/// A task's command name (at most 15 bytes), kept inline: decoding an event allocates
/// nothing. Bytes that are not UTF-8 read as `?`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// From a NUL-padded kernel `comm`.
    #[inline]
    pub fn from_kernel(raw: &[u8; COMM_LEN]) -> Comm {
        // The common case, per event: printable ASCII, copied as it is. The name's end and
        // the check are word operations over the whole block (no per-byte loop).
        const ONES: u128 = u128::MAX / 255;
        const HIGH: u128 = ONES * 0x80;
        let x = u128::from_le_bytes(*raw);
        // The lowest flagged byte is the first NUL (only bytes above a NUL can be flagged
        // falsely, by a borrow from it).
        let nul = x.wrapping_sub(ONES) & !x & HIGH;
        let len = ((nul.trailing_zeros() / 8) as usize).min(COMM_LEN - 1);
        let keep = low_bytes(len);
        let name = x & keep;
        // Any byte of the name below 0x20 or above 0x7e (bytes past it read as b'a'): the
        // "any byte below n" and "any byte above n" word tests, exact as to whether any is.
        let y = name | ((ONES * u128::from(b'a')) & !keep);
        let below = y.wrapping_sub(ONES * 0x20) & !y;
        let above = y.wrapping_add(ONES) | y;
        if (below | above) & HIGH == 0 {
            return Comm {
                bytes: name.to_le_bytes(),
                len: len as u8,
            };
        }
        Comm::from_kernel_text(raw, len)
    }

    /// [`Comm::from_kernel`] of a name that is not printable ASCII.
    #[cold]
    fn from_kernel_text(raw: &[u8; COMM_LEN], len: usize) -> Comm {
        let mut bytes = *raw;
        let Some(name) = bytes.get_mut(..len) else {
            return Comm::default();
        };
        if std::str::from_utf8(name).is_err() {
            for b in name.iter_mut() {
                if !b.is_ascii() {
                    *b = b'?';
                }
            }
        }
        Comm::new(std::str::from_utf8(name).unwrap_or("?"))
    }

    /// From text (cut to what the kernel keeps, on a character boundary). Any process can
    /// name itself anything, escape sequences included, and names reach terminals: control
    /// characters read as `?`.
    pub fn new(name: &str) -> Comm {
        let mut bytes = [0u8; COMM_LEN];
        let mut len = 0;
        for c in name.chars() {
            let c = if c.is_control() { '?' } else { c };
            if len + c.len_utf8() > COMM_LEN - 1 {
                break;
            }
            c.encode_utf8(&mut bytes[len..]);
            len += c.len_utf8();
        }
        Comm {
            bytes,
            len: len as u8,
        }
    }

    /// The name's bytes as a fixed-size block (what follows the name in it is unspecified)
    /// and its length, for writers that copy the block whole. Both constructors keep the
    /// name UTF-8, so these are the bytes of [`Comm::as_str`].
    #[inline]
    pub(crate) fn block(&self) -> (&[u8; COMM_LEN], usize) {
        (&self.bytes, usize::from(self.len).min(COMM_LEN))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// For `len` from 0 to 16, the mask of the first `len` bytes of a 16-byte block read
/// little-endian (a table: a variable 128-bit shift takes a dozen instructions).
const LOW_BYTES: [u128; COMM_LEN + 1] = {
    let mut t = [0u128; COMM_LEN + 1];
    let mut len = 1;
    while len <= COMM_LEN {
        t[len] = (t[len - 1] << 8) | 0xff;
        len += 1;
    }
    t
};

/// See [`LOW_BYTES`]; `len` past 16 is 16.
#[inline(always)]
pub(crate) fn low_bytes(len: usize) -> u128 {
    LOW_BYTES[len.min(COMM_LEN)]
}

/// TLS version and cipher as the kernel keeps them (`TLS_*_VERSION`, `TLS_CIPHER_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsWire {
    pub version: u16,
    pub cipher: u16,
}

impl TlsWire {
    /// The typed form, when this build knows both values.
    pub fn params(self) -> Option<TlsParams> {
        TlsParams::from_wire(self.version, self.cipher)
    }
}

/// One completed call, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// The thread's name.
    pub comm: Comm,
    /// The process's name (its main thread's), where known.
    pub process: Option<Comm>,
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
    /// TLS records the call closed (kernel TLS sends).
    pub records: Option<u32>,
    /// The kernel TLS socket's version and cipher (kernel TLS sends).
    pub tls: Option<TlsWire>,
}

impl TraceEvent {
    /// Bytes the call really moved: a positive return value (0 for errors).
    pub fn bytes_done(&self) -> u64 {
        match self.ret {
            Some(r) if r > 0 => r as u64,
            _ => 0,
        }
    }

    /// What the classifier needs to know of this call ([`ktls_trace_common::facts`]),
    /// computed by the same function the eBPF programs use for the in-kernel aggregates.
    pub fn facts(&self) -> u8 {
        let mut bits = 0u8;
        for (known, bit) in [
            (self.ret.is_some(), has::RET),
            (self.flags.is_some(), has::FLAGS),
            (self.head.is_some(), has::HEAD),
            (self.tls.is_some(), has::TLS),
            (self.records.is_some(), has::RECORDS),
            (self.sock.is_some(), has::SOCK),
        ] {
            if known {
                bits |= bit;
            }
        }
        ktls_trace_common::facts::of(
            bits,
            self.flags.unwrap_or(0),
            &self.head.unwrap_or([0; HEAD_LEN]),
            self.bytes,
            self.ret.unwrap_or(0),
        )
    }

    pub fn is_splice(&self) -> bool {
        self.flags.is_some_and(|f| f & msg::MSG_SPLICE_PAGES != 0)
    }

    /// Did this call run inside `p` (directly or further out)?
    pub fn nested_in(&self, p: Probe) -> bool {
        self.parent == Some(p) || self.root == Some(p)
    }

    /// The name that identifies the process: its own, else the thread's.
    pub fn process_name(&self) -> Comm {
        self.process.unwrap_or(self.comm)
    }
}

/// Decodes one ring-buffer record.
#[inline]
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
#[inline]
pub fn from_raw(e: &Event) -> Result<TraceEvent, DecodeError> {
    let probe = Probe::from_u8(e.probe).ok_or(DecodeError::Probe(e.probe))?;
    let opt = |bit: u8| e.has & bit != 0;
    Ok(TraceEvent {
        ts_ns: e.ts_ns,
        pid: e.pid,
        tid: e.tid,
        comm: Comm::from_kernel(&e.comm),
        process: None,
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
        records: opt(has::RECORDS).then_some(e.records),
        tls: opt(has::TLS).then_some(TlsWire {
            version: e.tls_version,
            cipher: e.tls_cipher,
        }),
    })
}

pub(crate) const FLAG_NAMES: [(u32, &str); 8] = [
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
    FlagNames(flags).to_string()
}

/// [`flag_names`] written in place (the JSON writer allocates nothing per event).
struct FlagNames(u32);

impl fmt::Display for FlagNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut sep = "";
        for (bit, name) in FLAG_NAMES {
            if self.0 & bit != 0 {
                write!(f, "{sep}{name}")?;
                sep = "|";
                rest &= !bit;
            }
        }
        if rest != 0 {
            write!(f, "{sep}{rest:#x}")?;
        }
        Ok(())
    }
}

/// The inverse of [`flag_names`].
pub fn parse_flag_names(text: &str) -> Option<u32> {
    let mut flags = 0;
    for part in text.split('|').filter(|p| !p.is_empty()) {
        flags |= match FLAG_NAMES.iter().find(|(_, n)| *n == part) {
            Some((bit, _)) => *bit,
            None => u32::from_str_radix(part.strip_prefix("0x")?, 16).ok()?,
        };
    }
    Some(flags)
}

/// Socket ids print as 16 hex digits.
pub fn sock_hex(sock: u64) -> String {
    format!("{sock:016x}")
}

/// Bytes as lowercase hex digits, written in place.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A socket id as [`sock_hex`] writes it, in place.
struct SockHex(u64);

impl fmt::Display for SockHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The TLS version and cipher as JSON names them: this build's names, or the kernel's
/// numbers (version in hex) for values it does not know.
enum TlsText {
    Name(&'static str),
    Version(u16),
    Cipher(u16),
}

impl TlsText {
    fn of(w: TlsWire) -> (TlsText, TlsText) {
        match w.params() {
            Some(p) => (
                TlsText::Name(p.version.name()),
                TlsText::Name(p.cipher.name()),
            ),
            None => (TlsText::Version(w.version), TlsText::Cipher(w.cipher)),
        }
    }
}

impl fmt::Display for TlsText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsText::Name(n) => f.write_str(n),
            TlsText::Version(v) => write!(f, "{v:#06x}"),
            TlsText::Cipher(c) => write!(f, "{c}"),
        }
    }
}

/// A [`fmt::Display`] value serialized as a JSON string, written straight into the output.
struct Text<T>(T);

impl<T: fmt::Display> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A `trace --json` line read back (see docs/event-schema.md); [`JsonLine`] writes it.
#[derive(Debug, Deserialize)]
pub struct JsonEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The process's name (its main thread's), where known.
    #[serde(default)]
    pub process: Option<String>,
    pub probe: String,
    pub bytes: u64,
    pub ret: Option<i64>,
    pub latency_ns: Option<u64>,
    pub sock: Option<String>,
    pub flags: Option<String>,
    pub parent: Option<String>,
    pub root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_fd: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_fd: Option<i32>,
    /// First payload bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// TLS records the call closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u32>,
    /// Kernel TLS socket: version ("1.3") and cipher ("aes-128-gcm"), or the kernel's
    /// number for values this build does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cipher: Option<String>,
}

/// An event as `trace --json` writes it (one object per line; docs/event-schema.md),
/// serialized straight from the decoded event: names are borrowed and hex written in
/// place, so a line costs no allocation. [`JsonEvent`] reads it back; `None` fields are
/// `null`, except the ones only some probes have, which are left out.
pub struct JsonLine<'a>(pub &'a TraceEvent);

impl Serialize for JsonLine<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let e = self.0;
        let mut m = s.serialize_struct("JsonEvent", 19)?;
        m.serialize_field("ts_ns", &e.ts_ns)?;
        m.serialize_field("pid", &e.pid)?;
        m.serialize_field("tid", &e.tid)?;
        m.serialize_field("comm", e.comm.as_str())?;
        m.serialize_field("process", &e.process.as_ref().map(Comm::as_str))?;
        m.serialize_field("probe", e.probe.name())?;
        m.serialize_field("bytes", &e.bytes)?;
        m.serialize_field("ret", &e.ret)?;
        m.serialize_field("latency_ns", &e.latency_ns)?;
        m.serialize_field("sock", &e.sock.map(|s| Text(SockHex(s))))?;
        m.serialize_field("flags", &e.flags.map(|f| Text(FlagNames(f))))?;
        m.serialize_field("parent", &e.parent.map(|p| p.name()))?;
        m.serialize_field("root", &e.root.map(|p| p.name()))?;
        if let Some((out_fd, in_fd)) = e.fds {
            m.serialize_field("out_fd", &out_fd)?;
            m.serialize_field("in_fd", &in_fd)?;
        }
        if let Some(head) = &e.head {
            m.serialize_field("head", &Text(Hex(head)))?;
        }
        if let Some(records) = e.records {
            m.serialize_field("records", &records)?;
        }
        if let Some(w) = e.tls {
            let (version, cipher) = TlsText::of(w);
            m.serialize_field("tls_version", &Text(version))?;
            m.serialize_field("tls_cipher", &Text(cipher))?;
        }
        m.end()
    }
}

/// Why a JSON line is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a trace event: {0}")]
pub struct JsonError(String);

fn probe_named(name: &str) -> Result<Probe, JsonError> {
    Probe::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| JsonError(format!("unknown probe {name:?}")))
}

fn tls_wire(version: &str, cipher: &str) -> Option<TlsWire> {
    use crate::tls::{Cipher, TlsVersion};
    let version = match TlsVersion::from_name(version) {
        Some(v) => v.wire(),
        None => u16::from_str_radix(version.strip_prefix("0x")?, 16).ok()?,
    };
    let cipher = match Cipher::from_name(cipher) {
        Some(c) => c.wire(),
        None => cipher.parse().ok()?,
    };
    Some(TlsWire { version, cipher })
}

impl TryFrom<JsonEvent> for TraceEvent {
    type Error = JsonError;

    fn try_from(j: JsonEvent) -> Result<TraceEvent, JsonError> {
        let bad = |what: &str| JsonError(format!("bad {what}"));
        let opt_probe = |n: Option<String>| n.as_deref().map(probe_named).transpose();
        Ok(TraceEvent {
            ts_ns: j.ts_ns,
            pid: j.pid,
            tid: j.tid,
            comm: Comm::new(&j.comm),
            process: j.process.as_deref().map(Comm::new),
            probe: probe_named(&j.probe)?,
            bytes: j.bytes,
            ret: j.ret,
            latency_ns: j.latency_ns,
            sock: j
                .sock
                .map(|s| u64::from_str_radix(&s, 16).map_err(|_| bad("sock")))
                .transpose()?,
            flags: j
                .flags
                .map(|f| parse_flag_names(&f).ok_or_else(|| bad("flags")))
                .transpose()?,
            fds: j.out_fd.zip(j.in_fd),
            parent: opt_probe(j.parent)?,
            root: opt_probe(j.root)?,
            head: j
                .head
                .map(|h| unhex::<HEAD_LEN>(&h).ok_or_else(|| bad("head")))
                .transpose()?,
            records: j.records,
            tls: match (j.tls_version, j.tls_cipher) {
                (Some(v), Some(c)) => Some(tls_wire(&v, &c).ok_or_else(|| bad("tls"))?),
                _ => None,
            },
        })
    }
}

/// Parses one `trace --json` line into an event (None for the summary line).
pub fn parse_json_line(line: &str) -> Result<Option<TraceEvent>, JsonError> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| JsonError(e.to_string()))?;
    if v.get("summary").is_some() {
        return Ok(None);
    }
    let j: JsonEvent = serde_json::from_value(v).map_err(|e| JsonError(e.to_string()))?;
    TraceEvent::try_from(j).map(Some)
}

/// Human-readable latency: 850ns, 12.5us, 3.20ms, 1.50s.
pub fn fmt_latency(ns: u64) -> String {
    match ns {
        ns if ns >= 1_000_000_000 => format!("{:.2}s", ns as f64 / 1e9),
        ns if ns >= 1_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        ns if ns >= 10_000 => format!("{:.0}us", ns as f64 / 1e3),
        ns => format!("{:.1}us", ns as f64 / 1e3),
    }
}

/// One human-readable line; `t0` is the ts_ns the trace started at.
pub fn human_line(e: &TraceEvent, t0: u64) -> String {
    use std::fmt::Write as _;
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
        let _ = write!(s, " ret={r}");
    }
    if let Some(l) = e.latency_ns {
        let _ = write!(s, " lat={}", fmt_latency(l));
    }
    if let Some((o, i)) = e.fds {
        let _ = write!(s, " out_fd={o} in_fd={i}");
    }
    if let Some(k) = e.sock {
        let _ = write!(s, " sock={}", sock_hex(k));
    }
    if let Some(f) = e.flags.filter(|f| *f != 0) {
        let _ = write!(s, " flags={}", flag_names(f));
    }
    if let Some(t) = e.tls {
        match t.params() {
            Some(p) => {
                let _ = write!(s, " tls={}/{}", p.version, p.cipher);
            }
            None => {
                let _ = write!(s, " tls={:#06x}/{}", t.version, t.cipher);
            }
        }
    }
    if let Some(r) = e.records {
        let _ = write!(s, " records={r}");
    }
    if let Some(p) = e.parent {
        let _ = write!(s, " in={}", p.name());
        if let Some(r) = e.root.filter(|r| *r != p) {
            let _ = write!(s, "<{}", r.name());
        }
    }
    if let Some(p) = e.process.filter(|p| *p != e.comm) {
        let _ = write!(s, " process={p}");
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ktls_trace_common::sock_id;

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
            records: 4,
            tls_version: 0x0304,
            tls_cipher: 51,
            probe: Probe::TlsSwSendmsg as u8,
            parent: Probe::DoSendfile as u8,
            root: Probe::DoSendfile as u8,
            has: has::RET | has::LATENCY | has::SOCK | has::FLAGS | has::TLS | has::RECORDS,
            comm,
            head: [0; HEAD_LEN],
        }
    }

    pub(crate) fn bytes_of(e: &Event) -> Vec<u8> {
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
        assert_eq!(e.records, Some(4));
        assert_eq!(
            e.tls.and_then(TlsWire::params).map(|p| p.to_string()),
            Some("TLS 1.3 AES-GCM-128".to_string())
        );
    }

    #[test]
    fn optional_fields_follow_has_bits() {
        let mut r = raw();
        r.has = 0;
        r.parent = Probe::NONE;
        r.root = Probe::NONE;
        let e = decode(&bytes_of(&r)).unwrap();
        assert_eq!(
            (e.ret, e.latency_ns, e.sock, e.flags, e.records, e.tls),
            (None, None, None, None, None, None)
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
    fn comm_names() {
        let mut raw = [0u8; COMM_LEN];
        raw[..4].copy_from_slice(&[b'a', 0xff, b'b', b'c']);
        assert_eq!(Comm::from_kernel(&raw).as_str(), "a?bc");
        // The kernel's names end in a NUL; without one, the 15 bytes it would keep.
        assert_eq!(
            Comm::from_kernel(&[b'x'; COMM_LEN]).as_str().len(),
            COMM_LEN - 1
        );
        // A name that would drive the terminal (clear screen, C1 CSI) is shown inert.
        let mut raw = [0u8; COMM_LEN];
        raw[..8].copy_from_slice(b"\x1b[2Jevil");
        assert_eq!(Comm::from_kernel(&raw).as_str(), "?[2Jevil");
        assert_eq!(Comm::new("a\u{9b}b\tc\x7f").as_str(), "a?b?c?");
        assert_eq!(
            Comm::new("a-very-long-thread-name").as_str(),
            "a-very-long-thr"
        );
        assert_eq!(Comm::new("ünïcödé-name-long").as_str().len(), 15);
        assert_eq!(Comm::default().as_str(), "");
    }

    /// `Comm::from_kernel` as it was before the word-at-a-time check (the reference).
    fn from_kernel_bytewise(raw: &[u8; COMM_LEN]) -> Comm {
        let len = raw
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(COMM_LEN)
            .min(COMM_LEN - 1);
        if raw[..len].iter().all(|c| (0x20..0x7f).contains(c)) {
            let mut bytes = [0u8; COMM_LEN];
            bytes[..len].copy_from_slice(&raw[..len]);
            return Comm {
                bytes,
                len: len as u8,
            };
        }
        let mut bytes = *raw;
        if std::str::from_utf8(&bytes[..len]).is_err() {
            for b in &mut bytes[..len] {
                if !b.is_ascii() {
                    *b = b'?';
                }
            }
        }
        Comm::new(std::str::from_utf8(&bytes[..len]).unwrap_or("?"))
    }

    #[test]
    fn comm_from_kernel_matches_the_bytewise_reading() {
        // Every byte value at every position, after names of every length (and garbage
        // past the NUL), and pseudo-random blocks.
        for len in 0..=COMM_LEN {
            for pos in 0..COMM_LEN {
                for c in 0..=255u8 {
                    let mut raw = [b'k'; COMM_LEN];
                    if len < COMM_LEN {
                        raw[len] = 0;
                    }
                    raw[pos] = c;
                    assert_eq!(
                        Comm::from_kernel(&raw),
                        from_kernel_bytewise(&raw),
                        "{raw:?}"
                    );
                }
            }
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut raw = [0u8; COMM_LEN];
            for (i, b) in raw.iter_mut().enumerate() {
                // Mostly printable, sometimes NUL, control, DEL or high bytes.
                let r = (x.rotate_left(i as u32 * 4) & 0xff) as u8;
                *b = match r % 16 {
                    0 => 0,
                    1 => r >> 3,
                    2 => 0x7f,
                    3 => r | 0x80,
                    _ => 0x20 + r % 0x5f,
                };
            }
            assert_eq!(
                Comm::from_kernel(&raw),
                from_kernel_bytewise(&raw),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn flags_are_named_and_read_back() {
        let both = msg::MSG_SPLICE_PAGES | msg::MSG_MORE;
        assert_eq!(flag_names(both), "MSG_SPLICE_PAGES|MSG_MORE");
        assert_eq!(flag_names(0), "");
        assert_eq!(
            flag_names(0x10000000 | msg::MSG_MORE),
            "MSG_MORE|0x10000000"
        );
        for f in [
            0,
            both,
            0x10000000 | msg::MSG_MORE,
            msg::MSG_SENDPAGE_NOTLAST,
        ] {
            assert_eq!(parse_flag_names(&flag_names(f)), Some(f));
        }
        assert_eq!(parse_flag_names("MSG_BOGUS"), None);
    }

    #[test]
    fn json_has_the_documented_keys_and_reads_back() {
        let mut e = decode(&bytes_of(&raw())).unwrap();
        e.process = Some(Comm::new("nginx-master"));
        e.head = Some([0x17, 3, 3, 0, 1, 2, 3, 4]);
        let v = serde_json::to_value(JsonLine(&e)).unwrap();
        for key in [
            "ts_ns",
            "pid",
            "tid",
            "comm",
            "process",
            "probe",
            "bytes",
            "ret",
            "latency_ns",
            "sock",
            "flags",
            "parent",
            "root",
            "head",
            "records",
            "tls_version",
            "tls_cipher",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["probe"], "tls_sw_sendmsg");
        assert_eq!(v["flags"], "MSG_SPLICE_PAGES|MSG_MORE");
        assert_eq!(v["parent"], "do_sendfile");
        assert_eq!(v["sock"].as_str().unwrap().len(), 16);
        assert_eq!(v["tls_version"], "1.3");
        assert_eq!(v["tls_cipher"], "aes-128-gcm");
        assert_eq!(v["head"], "1703030001020304");
        assert!(v.get("out_fd").is_none());
        let line = serde_json::to_string(&JsonLine(&e)).unwrap();
        assert_eq!(parse_json_line(&line).unwrap(), Some(e.clone()));
        // sendfile's descriptors; flag bits this build has no name for.
        let mut f = e.clone();
        f.fds = Some((7, 9));
        f.flags = Some(msg::MSG_MORE | 0x1000_0000);
        let line = serde_json::to_string(&JsonLine(&f)).unwrap();
        assert!(line.contains(r#""out_fd":7,"in_fd":9"#), "{line}");
        assert!(line.contains(r#""flags":"MSG_MORE|0x10000000""#), "{line}");
        assert_eq!(parse_json_line(&line).unwrap(), Some(f));
        // Unknown kernel values survive the round trip as numbers.
        e.tls = Some(TlsWire {
            version: 0x0305,
            cipher: 99,
        });
        let line = serde_json::to_string(&JsonLine(&e)).unwrap();
        assert!(
            line.contains(r#""tls_version":"0x0305","tls_cipher":"99""#),
            "{line}"
        );
        assert_eq!(parse_json_line(&line).unwrap(), Some(e));
        assert_eq!(parse_json_line(r#"{"summary":{}}"#).unwrap(), None);
        assert!(parse_json_line(r#"{"probe":"x"}"#).is_err());
    }

    #[test]
    fn human_line_mentions_nesting_and_tls() {
        let e = decode(&bytes_of(&raw())).unwrap();
        let line = human_line(&e, 0);
        assert!(line.contains("tls_sw_sendmsg"), "{line}");
        assert!(line.contains("in=do_sendfile"), "{line}");
        assert!(line.contains("flags=MSG_SPLICE_PAGES|MSG_MORE"), "{line}");
        assert!(line.contains("lat=2.5us"), "{line}");
        assert!(line.contains("tls=1.3/aes-128-gcm records=4"), "{line}");
    }

    #[test]
    fn latencies() {
        assert_eq!(fmt_latency(1_500), "1.5us");
        assert_eq!(fmt_latency(45_000), "45us");
        assert_eq!(fmt_latency(2_500_000), "2.50ms");
        assert_eq!(fmt_latency(1_500_000_000), "1.50s");
    }

    #[test]
    fn socket_ids_are_stable_and_distinct() {
        assert_eq!(sock_id(0x1000, 5), sock_id(0x1000, 5));
        assert_ne!(sock_id(0x1000, 5), sock_id(0x1040, 5));
        assert_ne!(sock_id(0x1000, 5), 0x1000);
    }
}
