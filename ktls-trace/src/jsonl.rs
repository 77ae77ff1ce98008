//! The `trace --json` line writer: one decoded event -> one JSON object and a newline
//! (docs/event-schema.md), written by hand into a reused byte buffer that goes out in large
//! writes. The schema is fixed, so the keys are constant byte strings, the integers are
//! formatted eight digits at a time in one 64-bit word, and the only text that needs
//! escaping is the thread and process names (any process can name itself anything).
//!
//! Per line, every write is a fixed-size copy into a block reserved for the line, without
//! bounds checks (see [`Line::raw`]), and the parts that repeat from event to event — what
//! depends only on the thread (pid, tid, names), the flag names, the TLS version and
//! cipher — are copied from where they were written last when what they were written from
//! is equal ([`Memo`]). docs/performance.md has the measurements.
//!
//! The output is byte for byte what `serde_json::to_writer(&JsonLine(e))` writes: the
//! tests compare the two over every combination of optional fields, every probe, every TLS
//! name and hostile names. [`JsonLine`](crate::event::JsonLine) stays the serde form of the
//! same line (and the reference); [`JsonEvent`](crate::event::JsonEvent) reads both back.

use std::io::{self, Write};

use ktls_trace_common::Probe;

use crate::event::{Comm, FLAG_NAMES, TlsWire, TraceEvent, low_bytes};

/// Lines are written out once the buffer holds this much: few writes per batch, and the
/// buffer stays small enough to stay in the cache (and bounded however large a batch is).
pub const FLUSH_AT: usize = 64 * 1024;

/// The block each line is written into: twice [`LINE_LIMIT`]. Every write starts at an
/// offset below `LINE_LIMIT` (masked into it: the line is shorter, see
/// [`Line::raw`]) and is at most `LINE_LIMIT` long, so it fits without a bounds check.
const LINE_MAX: usize = 2 * LINE_LIMIT;

/// More than any line can take, with room for the fixed-size copies past its end: keys
/// ~230 bytes, numbers at most 20 digits each, two names of 15 bytes escaped to at most 6
/// bytes per byte, every flag name (a test writes the longest line there can be).
const LINE_LIMIT: usize = 1024;

/// `trace --json` lines waiting to be written: a buffer allocated once, with room for a
/// line more than [`FLUSH_AT`], that lines are written into in place.
#[derive(Debug)]
pub struct JsonLines {
    buf: Box<[u8]>,
    len: usize,
    memo: Box<Memo>,
}

impl Default for JsonLines {
    fn default() -> Self {
        JsonLines::new()
    }
}

impl JsonLines {
    pub fn new() -> JsonLines {
        JsonLines {
            buf: vec![0; FLUSH_AT + LINE_MAX].into_boxed_slice(),
            len: 0,
            memo: Box::default(),
        }
    }

    /// Appends one event's line (the buffer grows if nobody wrote it out when full).
    #[inline]
    pub fn push(&mut self, e: &TraceEvent) {
        if self.buf.len() - self.len < LINE_MAX {
            self.grow();
        }
        // Always there: the buffer has room for a block.
        if let Some(dst) = self
            .buf
            .get_mut(self.len..)
            .and_then(|b| b.first_chunk_mut::<LINE_MAX>())
        {
            self.len += write_line(dst, e, &mut self.memo);
        }
    }

    #[cold]
    fn grow(&mut self) {
        let mut v = std::mem::take(&mut self.buf).into_vec();
        v.resize(2 * v.len() + LINE_MAX, 0);
        self.buf = v.into_boxed_slice();
    }

    /// Enough to write out (see [`FLUSH_AT`]).
    pub fn is_full(&self) -> bool {
        self.len >= FLUSH_AT
    }

    /// The lines not written yet.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the lines out in one `write_all` and empties the buffer (also on error: the
    /// lines are lost with the output).
    pub fn write_to(&mut self, out: &mut impl Write) -> io::Result<()> {
        let res = if self.len == 0 {
            Ok(())
        } else {
            out.write_all(&self.buf[..self.len])
        };
        self.len = 0;
        res
    }
}

/// Writes `e` as one JSON line, newline included, at the start of `dst`; returns its
/// length.
#[inline]
fn write_line(dst: &mut [u8; LINE_MAX], e: &TraceEvent, memo: &mut Memo) -> usize {
    let mut w = Line { b: dst, n: 0 };
    w.raw(b"{\"ts_ns\":");
    w.u64(e.ts_ns);
    let slot = &mut memo.threads[e.tid as usize % THREAD_SLOTS];
    if slot.is_for(e) {
        w.block(&slot.text, slot.len);
    } else {
        w.thread_part(e, slot);
    }
    w.raw(b",\"probe\":");
    w.probe(e.probe);
    w.raw(b",\"bytes\":");
    // A call that did all it was asked returns its size: its digits are made once.
    let bytes = u32::try_from(e.bytes)
        .ok()
        .filter(|b| *b < 100_000_000)
        .map(short_decimal);
    match bytes {
        Some((digits, len)) => w.block(&digits.to_le_bytes(), len),
        None => w.u64(e.bytes),
    }
    w.raw(b",\"ret\":");
    w.or_null(e.ret, |w, r| match bytes {
        Some((digits, len)) if u64::try_from(r) == Ok(e.bytes) => {
            w.block(&digits.to_le_bytes(), len)
        }
        _ => w.i64(r),
    });
    w.raw(b",\"latency_ns\":");
    w.or_null(e.latency_ns, Line::u64);
    w.raw(b",\"sock\":");
    w.or_null(e.sock, |w, s| {
        w.byte(b'"');
        w.raw(&hex16(s));
        w.byte(b'"');
    });
    w.raw(b",\"flags\":");
    w.or_null(e.flags, |w, f| {
        let slot = &mut memo.flags[flag_slot(f)];
        if slot.len != 0 && slot.flags == f {
            w.block(&slot.text, slot.len);
        } else {
            w.flags_part(f, slot);
        }
    });
    w.raw(b",\"parent\":");
    w.or_null(e.parent, Line::probe);
    w.raw(b",\"root\":");
    w.or_null(e.root, Line::probe);
    if let Some((out_fd, in_fd)) = e.fds {
        w.raw(b",\"out_fd\":");
        w.i64(out_fd.into());
        w.raw(b",\"in_fd\":");
        w.i64(in_fd.into());
    }
    if let Some(head) = e.head {
        w.raw(b",\"head\":\"");
        w.raw(&hex16(u64::from_be_bytes(head)));
        w.byte(b'"');
    }
    if let Some(r) = e.records {
        w.raw(b",\"records\":");
        w.u64(r.into());
    }
    if let Some(t) = e.tls {
        let part = &mut memo.tls;
        if part.len != 0 && part.wire == t {
            w.block(&part.text, part.len);
        } else {
            w.tls_part(t, part);
        }
    }
    w.raw(b"}\n");
    w.n
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Slots of [`Memo::threads`], by thread id.
const THREAD_SLOTS: usize = 16;
/// Room for a thread's part of a line (longer ones are written every time).
const THREAD_PART: usize = 128;
/// Slots of [`Memo::flags`], by a hash of the flags.
const FLAG_SLOTS: usize = 8;
/// Room for a flags value's text, quotes included (longer ones are written every time).
const FLAGS_PART: usize = 48;

/// The parts of a line that repeat from event to event, as written last time: what
/// depends only on the thread (`,"pid":…,"tid":…,"comm":…,"process":…`: two integers and
/// two names to check for escapes) and the flag names. A part is reused only when
/// everything it was written from is equal, so the line is the same byte for byte.
#[derive(Debug)]
struct Memo {
    threads: [ThreadPart; THREAD_SLOTS],
    flags: [FlagsPart; FLAG_SLOTS],
    /// The last TLS version and cipher (a trace has few kinds of kTLS sockets).
    tls: TlsPart,
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            threads: [ThreadPart::default(); THREAD_SLOTS],
            flags: [FlagsPart::default(); FLAG_SLOTS],
            tls: TlsPart::default(),
        }
    }
}

/// What [`Line::thread_part`] wrote for one thread (`len` 0: nothing yet).
#[derive(Debug, Clone, Copy)]
struct ThreadPart {
    pid: u32,
    tid: u32,
    comm: Comm,
    process: Option<Comm>,
    len: usize,
    text: [u8; THREAD_PART],
}

impl Default for ThreadPart {
    fn default() -> Self {
        ThreadPart {
            pid: 0,
            tid: 0,
            comm: Comm::default(),
            process: None,
            len: 0,
            text: [0; THREAD_PART],
        }
    }
}

impl ThreadPart {
    #[inline(always)]
    fn is_for(&self, e: &TraceEvent) -> bool {
        self.len != 0
            && self.tid == e.tid
            && self.pid == e.pid
            && self.comm == e.comm
            && self.process == e.process
    }
}

/// What [`Line::tls`] wrote last (`len` 0: nothing yet).
#[derive(Debug, Clone, Copy)]
struct TlsPart {
    wire: TlsWire,
    len: usize,
    text: [u8; TLS_PART],
}

/// Room for the TLS version and cipher, keys included.
const TLS_PART: usize = 64;

impl Default for TlsPart {
    fn default() -> Self {
        TlsPart {
            wire: TlsWire {
                version: 0,
                cipher: 0,
            },
            len: 0,
            text: [0; TLS_PART],
        }
    }
}

/// What [`Line::flags`] wrote for one value (`len` 0: nothing yet).
#[derive(Debug, Clone, Copy)]
struct FlagsPart {
    flags: u32,
    len: usize,
    text: [u8; FLAGS_PART],
}

impl Default for FlagsPart {
    fn default() -> Self {
        FlagsPart {
            flags: 0,
            len: 0,
            text: [0; FLAGS_PART],
        }
    }
}

/// The slot of a flags value (a multiplicative hash: the named bits are spread over the
/// word).
#[inline(always)]
fn flag_slot(flags: u32) -> usize {
    (flags.wrapping_mul(0x9e37_79b1) >> 29) as usize % FLAG_SLOTS
}

/// A byte repeated in every byte of a word.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// `v` < 10^8 as exactly eight ASCII digits, the first in the lowest byte: split in
/// 32-bit lanes (two halves of four digits), then 16-bit lanes (pairs), then bytes,
/// dividing every lane at once by a multiply and shift (exact for these ranges: 10486 /
/// 2^20 for x < 10^4 and 103 / 2^10 for x < 100; no lane overflows into the next).
#[inline]
fn eight_digits(v: u32) -> u64 {
    let x = u64::from(v / 10_000) | (u64::from(v % 10_000) << 32);
    let q = ((x * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let x = q | ((x - q * 100) << 16);
    let q = ((x * 103) >> 10) & 0x000f_000f_000f_000f;
    let x = q | ((x - q * 10) << 8);
    x + splat(b'0')
}

/// `v` < 10^8 in decimal without leading zeros: the digits in one word, the first in the
/// lowest byte, and how many there are.
#[inline(always)]
fn short_decimal(v: u32) -> (u64, usize) {
    let w = eight_digits(v);
    // Every byte is b'0'..=b'9': subtracting b'0' from each borrows nowhere, and the
    // leading zero digits become the zero bytes at the low end. One digit stays.
    let zeros = ((w - splat(b'0')).trailing_zeros() / 8).min(7) as usize;
    (w >> (8 * zeros), 8 - zeros)
}

/// 16 lowercase hex digits, the most significant first (socket ids; the 8 head bytes read
/// big-endian): every nibble spread into a byte of its own, then turned into its digit.
#[inline]
fn hex16(v: u64) -> [u8; 16] {
    // Nibble k of `x` (from the low end) into byte k, as its ASCII digit.
    fn spread(x: u32) -> u64 {
        let x = u64::from(x);
        let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        let x = (x | (x << 4)) & splat(0x0f);
        let letters = ((x + splat(6)) >> 4) & splat(1);
        x + splat(b'0') + letters * u64::from(b'a' - b'0' - 10)
    }
    let hi = u128::from(spread((v >> 32) as u32));
    let lo = u128::from(spread(v as u32));
    // Big-endian: byte 15 (the top nibble) comes first.
    ((hi << 64) | lo).to_be_bytes()
}

/// Do the first `len` bytes of `b` go into a JSON string as they are (no `"`, `\` or
/// control character below 0x20)? Checked over the whole block at once: bytes past `len`
/// are replaced by a harmless one, then the classic "is any byte below n / zero" word tests
/// (exact for the question whether any byte is).
#[inline]
fn json_plain(b: &[u8; 16], len: usize) -> bool {
    const ONES: u128 = u128::MAX / 255;
    const HIGH: u128 = ONES * 0x80;
    let keep = low_bytes(len);
    let x = (u128::from_le_bytes(*b) & keep) | ((ONES * u128::from(b'a')) & !keep);
    let zero = |y: u128| y.wrapping_sub(ONES) & !y & HIGH;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    below_space | zero(x ^ (ONES * u128::from(b'"'))) | zero(x ^ (ONES * u128::from(b'\\'))) == 0
}

/// [`json_plain`] for a short string (false for one longer than 16 bytes).
fn json_plain_str(s: &str) -> bool {
    let mut b = [0u8; 16];
    match b.get_mut(..s.len()) {
        Some(dst) => {
            dst.copy_from_slice(s.as_bytes());
            json_plain(&b, s.len())
        }
        None => false,
    }
}

/// Room for a quoted name in a fixed-size block.
const NAME_BLOCK: usize = 32;

/// `"name"` in a block of [`NAME_BLOCK`] bytes, and its length: copied whole, one fixed-size
/// copy instead of a call to `memcpy`.
const fn block(name: &str, open: u8, close: bool) -> ([u8; NAME_BLOCK], usize) {
    let s = name.as_bytes();
    let mut b = [0u8; NAME_BLOCK];
    let mut n = 0;
    if open != 0 {
        b[n] = open;
        n += 1;
    }
    let mut i = 0;
    while i < s.len() {
        // Names written without escaping: a name that would need it does not compile.
        assert!(s[i] >= 0x20 && s[i] != b'"' && s[i] != b'\\' && s[i] < 0x80);
        b[n] = s[i];
        n += 1;
        i += 1;
    }
    if close {
        b[n] = b'"';
        n += 1;
    }
    (b, n)
}

/// Every probe's name, quoted, by discriminant.
const PROBE_NAMES: [([u8; NAME_BLOCK], usize); Probe::ALL.len()] = {
    let mut t = [([0u8; NAME_BLOCK], 0); Probe::ALL.len()];
    let mut i = 0;
    while i < t.len() {
        t[i] = block(Probe::ALL[i].name(), b'"', true);
        i += 1;
    }
    t
};

/// Every flag's bit, and its name after a `|`, in [`FLAG_NAMES`] order.
const FLAG_TEXT: [(u32, [u8; NAME_BLOCK], usize); FLAG_NAMES.len()] = {
    let mut t = [(0, [0u8; NAME_BLOCK], 0); FLAG_NAMES.len()];
    let mut i = 0;
    while i < t.len() {
        let (b, len) = block(FLAG_NAMES[i].1, b'|', false);
        t[i] = (FLAG_NAMES[i].0, b, len);
        i += 1;
    }
    t
};

/// The bits [`FLAG_NAMES`] names.
const NAMED_FLAGS: u32 = {
    let mut all = 0;
    let mut i = 0;
    while i < FLAG_NAMES.len() {
        all |= FLAG_NAMES[i].0;
        i += 1;
    }
    all
};

/// One line being written into its block. Every write is a fixed-size copy
/// ([`Line::raw`]), which has room: a line is shorter than [`LINE_LIMIT`], fixed-size
/// copies past its end included (`the_longest_line_fits`).
struct Line<'a> {
    b: &'a mut [u8; LINE_MAX],
    n: usize,
}

impl Line<'_> {
    /// An optional value: written by `write`, or `null`.
    #[inline(always)]
    fn or_null<T>(&mut self, v: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => write(self, v),
            None => self.raw(b"null"),
        }
    }

    /// `s` at the end of the line. The offset is masked into the first half of the block
    /// (a no-op: lines are shorter), so the compiler sees the copy fits and checks no
    /// bounds.
    #[inline(always)]
    fn raw<const K: usize>(&mut self, s: &[u8; K]) {
        const { assert!(K <= LINE_LIMIT && LINE_LIMIT.is_power_of_two()) };
        let i = self.n & (LINE_LIMIT - 1);
        // `i + K <= LINE_MAX`: always there.
        if let Some((dst, _)) = self.b[i..].split_first_chunk_mut::<K>() {
            *dst = *s;
        }
        self.n += K;
    }

    /// A block copied whole, of which the first `len` bytes count.
    #[inline(always)]
    fn block<const K: usize>(&mut self, s: &[u8; K], len: usize) {
        self.raw(s);
        self.n -= K - len.min(K);
    }

    #[inline(always)]
    fn byte(&mut self, c: u8) {
        self.raw(&[c]);
    }

    /// Decimal, as serde_json (and `Display`) write integers: in groups of eight digits,
    /// each made in one word.
    #[inline(always)]
    fn u64(&mut self, v: u64) {
        const E8: u64 = 100_000_000;
        if v < E8 {
            self.up_to_8(v as u32);
        } else {
            self.u64_long(v);
        }
    }

    /// `v` >= 10^8 (every timestamp).
    #[inline(always)]
    fn u64_long(&mut self, v: u64) {
        const E8: u64 = 100_000_000;
        let (hi, lo) = (v / E8, (v % E8) as u32);
        if hi < E8 {
            self.up_to_8(hi as u32);
        } else {
            // u64::MAX / 10^16 has 4 digits.
            self.up_to_8((hi / E8) as u32);
            self.raw(&eight_digits((hi % E8) as u32).to_le_bytes());
        }
        self.raw(&eight_digits(lo).to_le_bytes());
    }

    /// `v` < 10^8 without leading zeros.
    #[inline(always)]
    fn up_to_8(&mut self, v: u32) {
        let (w, len) = short_decimal(v);
        self.block(&w.to_le_bytes(), len);
    }

    #[inline(always)]
    fn i64(&mut self, v: i64) {
        // The sign is written always and counted only when there is one.
        self.raw(b"-");
        self.n -= usize::from(v >= 0);
        self.u64(v.unsigned_abs());
    }

    /// Lowercase hex without leading zeros, at least `width` digits (`{:#0Nx}` without
    /// the `0x`, which the caller writes).
    #[cold]
    fn hex(&mut self, v: u64, width: usize) {
        let digits = (64 - v.leading_zeros() as usize)
            .div_ceil(4)
            .max(width.max(1));
        for i in (0..digits).rev() {
            self.byte(HEX[((v >> (4 * i)) & 0xf) as usize]);
        }
    }

    #[inline(always)]
    fn probe(&mut self, p: Probe) {
        let (b, len) = &PROBE_NAMES[p as usize];
        self.block(b, *len);
    }

    /// `,"pid":…,"tid":…,"comm":…,"process":…`, kept in `slot` for the thread's next
    /// events when it fits.
    #[inline(never)]
    fn thread_part(&mut self, e: &TraceEvent, slot: &mut ThreadPart) {
        let start = self.n;
        self.raw(b",\"pid\":");
        self.u64(e.pid.into());
        self.raw(b",\"tid\":");
        self.u64(e.tid.into());
        self.raw(b",\"comm\":");
        self.comm(&e.comm);
        self.raw(b",\"process\":");
        self.or_null(e.process.as_ref(), Line::comm);
        self.keep(start, &mut slot.text, &mut slot.len);
        slot.pid = e.pid;
        slot.tid = e.tid;
        slot.comm = e.comm;
        slot.process = e.process;
    }

    /// The flags' text, kept in `slot` for the next events with the same flags when it
    /// fits.
    #[inline(never)]
    fn flags_part(&mut self, flags: u32, slot: &mut FlagsPart) {
        let start = self.n;
        self.flags(flags);
        self.keep(start, &mut slot.text, &mut slot.len);
        slot.flags = flags;
    }

    /// The TLS version and cipher, kept in `slot` for the next events with the same ones.
    #[inline(never)]
    fn tls_part(&mut self, t: TlsWire, slot: &mut TlsPart) {
        let start = self.n;
        self.tls(t);
        self.keep(start, &mut slot.text, &mut slot.len);
        slot.wire = t;
    }

    /// Copies what was written since `start` into `text` and sets `len` (0 when it does
    /// not fit).
    fn keep<const K: usize>(&self, start: usize, text: &mut [u8; K], len: &mut usize) {
        let part = self.b.get(start..self.n).unwrap_or_default();
        match text.get_mut(..part.len()) {
            Some(dst) if !part.is_empty() => {
                dst.copy_from_slice(part);
                *len = part.len();
            }
            _ => *len = 0,
        }
    }

    /// A thread or process name, escaped as serde_json escapes strings. Names are short
    /// and almost never need escaping: the check and the copy take the whole block.
    #[inline(always)]
    fn comm(&mut self, c: &Comm) {
        let (b, len) = c.block();
        if json_plain(b, len) {
            self.byte(b'"');
            self.block(b, len);
            self.byte(b'"');
        } else {
            self.str(c.as_str());
        }
    }

    /// One of this build's names (TLS versions and ciphers), quoted: copied through a
    /// fixed-size block when it needs no escaping (they never do).
    #[inline]
    fn name(&mut self, s: &str) {
        let mut b = [0u8; 16];
        match b.get_mut(..s.len()) {
            Some(dst) if json_plain_str(s) => {
                dst.copy_from_slice(s.as_bytes());
                self.byte(b'"');
                self.block(&b, s.len());
                self.byte(b'"');
            }
            _ => self.str(s),
        }
    }

    /// A JSON string, escaped as serde_json escapes: `"` and `\` with a backslash, the
    /// control characters below 0x20 as `\b \t \n \f \r` or `\u00XX` (lowercase hex),
    /// everything else (DEL, any other character) as it is. Only for short strings (a
    /// name): at most 6 bytes are written per byte.
    #[cold]
    #[inline(never)]
    fn str(&mut self, s: &str) {
        self.byte(b'"');
        for &c in s.as_bytes() {
            match c {
                b'"' => self.raw(b"\\\""),
                b'\\' => self.raw(b"\\\\"),
                b'\n' => self.raw(b"\\n"),
                b'\r' => self.raw(b"\\r"),
                b'\t' => self.raw(b"\\t"),
                0x08 => self.raw(b"\\b"),
                0x0c => self.raw(b"\\f"),
                0..0x20 => self.raw(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(c >> 4)],
                    HEX[usize::from(c & 0xf)],
                ]),
                _ => self.byte(c),
            }
        }
        self.byte(b'"');
    }

    /// `"MSG_SPLICE_PAGES|MSG_MORE"`, unknown bits in hex, `""` for none (as
    /// `flag_names`). Without branches on the bits: every name is written after a `|`
    /// and counted only when its bit is set; the quote then takes the place of the first
    /// `|`.
    #[inline(always)]
    fn flags(&mut self, flags: u32) {
        let start = self.n;
        for (bit, text, len) in &FLAG_TEXT {
            self.raw(text);
            self.n -= NAME_BLOCK - if flags & bit != 0 { *len } else { 0 };
        }
        let rest = flags & !NAMED_FLAGS;
        if rest != 0 {
            self.raw(b"|0x");
            self.hex(rest.into(), 1);
        }
        // `"` over the first `|`, or alone.
        let end = self.n.max(start + 1);
        self.n = start;
        self.byte(b'"');
        self.n = end;
        self.byte(b'"');
    }

    /// This build's names, or the kernel's numbers: the version as `0x0305`, the cipher
    /// in decimal.
    fn tls(&mut self, t: TlsWire) {
        self.raw(b",\"tls_version\":");
        match t.params() {
            Some(p) => {
                self.name(p.version.name());
                self.raw(b",\"tls_cipher\":");
                self.name(p.cipher.name());
            }
            None => {
                self.raw(b"\"0x");
                self.hex(t.version.into(), 4);
                self.raw(b"\",\"tls_cipher\":\"");
                self.u64(t.cipher.into());
                self.byte(b'"');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, JsonLine, parse_json_line};
    use ktls_trace_common::{Probe, msg};

    fn serde_line(e: &TraceEvent) -> Vec<u8> {
        let mut v = serde_json::to_vec(&JsonLine(e)).unwrap();
        v.push(b'\n');
        v
    }

    fn ours(e: &TraceEvent) -> Vec<u8> {
        let mut lines = JsonLines::new();
        lines.push(e);
        lines.as_bytes().to_vec()
    }

    fn same(e: &TraceEvent) {
        let (a, b) = (ours(e), serde_line(e));
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{e:?}"
        );
        assert_eq!(a, b);
    }

    fn base() -> TraceEvent {
        TraceEvent {
            ts_ns: 512_297_252_285,
            pid: 9243,
            tid: 9244,
            comm: Comm::new("ktls-workload"),
            process: None,
            probe: Probe::TlsSwSendmsg,
            bytes: 65_536,
            ret: None,
            latency_ns: None,
            sock: None,
            flags: None,
            fds: None,
            parent: None,
            root: None,
            head: None,
            records: None,
            tls: None,
        }
    }

    /// Names a process can give itself, escapes and all, however `Comm` keeps them.
    fn odd_names() -> Vec<Comm> {
        let mut names: Vec<Comm> = [
            "",
            "nginx",
            "a\"b",
            "back\\slash",
            "\\\"\\\"",
            "tab\there",
            "nl\ncr\r",
            "\x1b[2Jevil",
            "\u{7f}del",
            "ünïcödé",
            "日本語",
            "emoji😀",
            "a\u{9b}b",
            "</script>",
            "{\"k\":1}",
            "'single'",
            "a-very-long-thread-name",
        ]
        .iter()
        .map(|n| Comm::new(n))
        .collect();
        // From the kernel: non-UTF-8, control bytes, no NUL at all.
        for raw in [
            &b"a\xffb\xc3"[..],
            b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f",
            b"\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e",
            b"\x1f\"\\\x7f\xc3\xa9\xe2\x82\xac",
            b"xxxxxxxxxxxxxxxx",
        ] {
            let mut k = [0u8; ktls_trace_common::COMM_LEN];
            let n = raw.len().min(k.len());
            k[..n].copy_from_slice(&raw[..n]);
            names.push(Comm::from_kernel(&k));
        }
        names
    }

    #[test]
    fn every_optional_field_combination_matches_serde() {
        let probes = || Probe::ALL.into_iter();
        let mut n = 0;
        for mask in 0u32..(1 << 11) {
            let on = |bit: u32| mask & (1 << bit) != 0;
            for probe in probes() {
                let mut e = base();
                e.probe = probe;
                e.process = on(0).then(|| Comm::new("nginx: worker"));
                e.ret = on(1).then_some(-11);
                e.latency_ns = on(2).then_some(41_230);
                e.sock = on(3).then_some(0xaa4a_bf50_2d03_2e02);
                e.flags = on(4).then_some(msg::MSG_SPLICE_PAGES | msg::MSG_MORE);
                e.fds = on(5).then_some((7, 9));
                e.parent = on(6).then_some(Probe::DoSendfile);
                e.root = on(7).then_some(Probe::ALL[(n % 11) as usize]);
                e.head = on(8).then_some([0x17, 3, 3, 0, 1, 2, 3, 4]);
                e.records = on(9).then_some(4);
                e.tls = on(10).then_some(TlsWire {
                    version: 0x0304,
                    cipher: 51,
                });
                same(&e);
                n += 1;
            }
        }
        assert_eq!(n, 2048 * 11);
    }

    #[test]
    fn numbers_flags_and_tls_match_serde() {
        let ints: [u64; 14] = [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1_000,
            65_536,
            4_294_967_295,
            9_999_999_999_999_999,
            10_000_000_000_000_000_000,
            u64::MAX,
        ];
        let signed: [i64; 9] = [0, -1, -11, -32, -4095, i64::MIN, i64::MIN + 1, i64::MAX, 42];
        let mut e = base();
        for (i, &v) in ints.iter().enumerate() {
            e.ts_ns = v;
            e.bytes = ints[ints.len() - 1 - i];
            e.latency_ns = Some(v / 3);
            e.pid = v as u32;
            e.tid = (v >> 32) as u32;
            e.records = Some(v as u32 ^ 0xdead_beef);
            e.sock = Some(v.rotate_left(13));
            e.head = Some(v.to_le_bytes());
            for &r in &signed {
                e.ret = Some(r);
                e.fds = Some((r as i32, (r >> 32) as i32));
                same(&e);
            }
            // A return value equal to the size (its digits are reused), and near it.
            for b in [
                v,
                v.wrapping_add(1),
                v.saturating_sub(1),
                99_999_999,
                100_000_000,
            ] {
                e.bytes = b;
                for r in [
                    b as i64,
                    (b as i64).wrapping_neg(),
                    (b as i64).wrapping_add(1),
                ] {
                    e.ret = Some(r);
                    same(&e);
                }
            }
        }
        for fds in [(i32::MIN, i32::MAX), (-1, 0), (0, -1)] {
            e.fds = Some(fds);
            same(&e);
        }
        // Every single flag bit, none, all, and bits this build has no name for.
        let mut flags = vec![0, u32::MAX, 0x1000_0000, msg::MSG_MORE | 0x1000_0000];
        flags.extend((0..32).map(|b| 1u32 << b));
        flags.extend(FLAG_NAMES.iter().map(|(b, _)| *b | 0x8000_0000));
        flags.push(FLAG_NAMES.iter().fold(0, |a, (b, _)| a | b));
        for f in flags {
            e.flags = Some(f);
            same(&e);
        }
        // Known and unknown versions and ciphers (names, or the kernel's numbers).
        for version in [0, 1, 0x0303, 0x0304, 0x0305, 0x0abc, 0xffff] {
            for cipher in [0, 1, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 99, 65_535] {
                e.tls = Some(TlsWire { version, cipher });
                same(&e);
            }
        }
    }

    #[test]
    fn hostile_names_are_escaped_as_serde_escapes_them() {
        let names = odd_names();
        for comm in &names {
            for process in names.iter().map(Some).chain([None]) {
                let mut e = base();
                e.comm = *comm;
                e.process = process.copied();
                same(&e);
                // And the reader gets the same event back.
                let line = String::from_utf8(ours(&e)).unwrap();
                assert_eq!(parse_json_line(line.trim_end()).unwrap(), Some(e));
            }
        }
        // `Comm` never keeps a control character, but the writer escapes any string
        // exactly as serde_json does: every byte below 0x80, and multi-byte characters.
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€😀\u{9b}\u{2028}");
        for s in [all.as_str(), "\"", "\\", "\u{0}", "x\u{1f}", "plain"] {
            let mut b = [0u8; LINE_MAX];
            let mut w = Line { b: &mut b, n: 0 };
            w.str(s);
            let n = w.n;
            assert_eq!(b[..n], serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    /// Lines written one after the other into one buffer, where the parts kept from
    /// earlier lines ([`Memo`]) are reused: threads whose slots collide, a thread renamed
    /// or moved to another process, flags whose slots collide, values too long to keep.
    #[test]
    fn lines_in_sequence_match_serde() {
        let names = odd_names();
        let mut events = Vec::new();
        for (i, tid) in [5u32, 21, 37, 5, 6, 4_194_304, u32::MAX]
            .into_iter()
            .enumerate()
        {
            for (j, comm) in names.iter().enumerate().step_by(3) {
                // The same thread and name: other pids, other process names.
                for variant in 0..4 {
                    let mut e = base();
                    e.tid = tid;
                    e.pid = if variant == 3 { 7 } else { tid };
                    e.comm = *comm;
                    e.process = match variant {
                        0 => None,
                        1 | 3 => Some(*comm),
                        _ => Some(names[(i + 2 * j) % names.len()]),
                    };
                    events.push(e);
                }
            }
        }
        let mut flags = vec![0, u32::MAX, msg::MSG_MORE | 0x1000_0000];
        flags.extend((0..32).map(|b| 1u32 << b));
        flags.extend(FLAG_NAMES.iter().map(|(b, _)| *b | msg::MSG_SPLICE_PAGES));
        let mut all = Vec::new();
        // A fixed pseudo-random order, every event several times.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..8 {
            for k in 0..events.len() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut e = events[(x as usize + k) % events.len()].clone();
                e.flags = (round % 4 != 3).then(|| flags[(x >> 32) as usize % flags.len()]);
                e.ts_ns = x >> (x % 64);
                if k % 5 == 0 {
                    e.tls = Some(TlsWire {
                        version: if round % 2 == 0 { 0x0304 } else { 0x0305 },
                        cipher: if k % 10 == 0 { 51 } else { 52 },
                    });
                }
                all.push(e);
            }
        }
        let mut lines = JsonLines::new();
        let mut want = Vec::new();
        for e in &all {
            lines.push(e);
            want.extend(serde_line(e));
        }
        assert_eq!(
            String::from_utf8_lossy(lines.as_bytes()),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(lines.as_bytes(), want);
    }

    /// The whole path from the wire: ring-buffer records (every `has` bit combination,
    /// kernel names printable or not, nesting or none) decoded and written one after the
    /// other, against serde's lines of the same decoded events.
    #[test]
    fn lines_from_ring_records_match_serde() {
        use crate::event::{decode, tests::bytes_of};
        use ktls_trace_common::{COMM_LEN, Event};
        let comms: [&[u8]; 5] = [b"nginx", b"ktls-load-srv", b"a\"b\\c", b"\x1b[2J\xff", b""];
        let mut lines = JsonLines::new();
        let mut want = Vec::new();
        let mut n = 0u64;
        for bits in 0..=u8::MAX {
            for (i, name) in comms.iter().enumerate() {
                let mut comm = [0u8; COMM_LEN];
                comm[..name.len()].copy_from_slice(name);
                n += 1;
                let raw = Event {
                    ts_ns: 1_000_000_000 + n * 5_000,
                    latency_ns: n * 7,
                    bytes: 65_536 >> (n % 5),
                    ret: if n.is_multiple_of(7) {
                        -11
                    } else {
                        (65_536 >> (n % 5)) as i64
                    },
                    sock: n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    pid: 400 + (i % 2) as u32,
                    tid: 401 + i as u32,
                    flags: msg::MSG_SPLICE_PAGES >> (n % 3),
                    fd_out: 5,
                    fd_in: -1,
                    records: 4,
                    tls_version: 0x0304,
                    tls_cipher: 51 + (n % 2) as u16,
                    probe: (n % Probe::ALL.len() as u64) as u8,
                    parent: if n.is_multiple_of(3) { Probe::NONE } else { 1 },
                    root: if n.is_multiple_of(3) { Probe::NONE } else { 0 },
                    has: bits,
                    comm,
                    head: [0x17, 3, 3, 0, 0x40, 0, 0, n as u8],
                };
                let e = decode(&bytes_of(&raw)).unwrap();
                lines.push(&e);
                want.extend(serde_line(&e));
            }
        }
        assert_eq!(
            String::from_utf8_lossy(lines.as_bytes()),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(lines.as_bytes(), want);
    }

    /// The word-at-a-time helpers against the plain definitions.
    #[test]
    fn digits_hex_and_plain_checks() {
        let mut v = 0u32;
        while v < 100_000_000 {
            assert_eq!(eight_digits(v).to_le_bytes(), *format!("{v:08}").as_bytes());
            v += if v < 200_000 { 1 } else { 9_973 };
        }
        assert_eq!(eight_digits(99_999_999).to_le_bytes(), *b"99999999");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..100_000 {
            x = x.rotate_left(11).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ i;
            for v in [x, x >> (i % 64), u64::MAX, 0] {
                assert_eq!(hex16(v), *format!("{v:016x}").as_bytes());
            }
        }
        // Every byte value at every position, inside the name and past its end.
        let plain = |b: &[u8], len: usize| {
            b[..len]
                .iter()
                .all(|&c| c >= 0x20 && c != b'"' && c != b'\\')
        };
        for len in 0..=16 {
            for pos in 0..16 {
                for c in 0..=255u8 {
                    let mut b = [b'x'; 16];
                    b[pos] = c;
                    assert_eq!(json_plain(&b, len), plain(&b, len), "{len} {pos} {c}");
                    let mut b = [0u8; 16];
                    b[pos] = c;
                    assert_eq!(json_plain(&b, len), plain(&b, len), "{len} {pos} {c}");
                }
            }
        }
    }

    #[test]
    fn the_longest_line_fits() {
        let mut e = base();
        e.ts_ns = u64::MAX;
        e.pid = u32::MAX;
        e.tid = u32::MAX;
        e.bytes = u64::MAX;
        e.comm = Comm::new("\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"");
        e.process = Some(e.comm);
        e.probe = Probe::TlsDeviceSendpage;
        e.ret = Some(i64::MIN);
        e.latency_ns = Some(u64::MAX);
        e.sock = Some(u64::MAX);
        e.flags = Some(u32::MAX);
        e.fds = Some((i32::MIN, i32::MIN));
        e.parent = Some(Probe::TlsDeviceSendpage);
        e.root = Some(Probe::TlsDeviceSendpage);
        e.head = Some([0xff; 8]);
        e.records = Some(u32::MAX);
        e.tls = Some(TlsWire {
            version: 0xffff,
            cipher: u16::MAX,
        });
        same(&e);
        // Names are at most 15 bytes; a control character (which `Comm` never keeps)
        // would take 6 bytes escaped: at most 90 bytes per name.
        let len = ours(&e).len() + 2 * 6 * 15;
        assert!(len + NAME_BLOCK < LINE_LIMIT, "{len}");
    }

    #[test]
    fn buffer_flushes_in_large_writes() {
        let mut lines = JsonLines::new();
        let mut out = Vec::new();
        let e = base();
        let mut pushed = 0;
        while !lines.is_full() {
            lines.push(&e);
            pushed += 1;
        }
        assert!(pushed > 100, "{pushed}");
        // Not written out when full: the buffer grows, nothing is lost.
        for _ in 0..pushed {
            lines.push(&e);
        }
        pushed *= 2;
        lines.write_to(&mut out).unwrap();
        assert!(lines.as_bytes().is_empty());
        assert_eq!(out, serde_line(&e).repeat(pushed));
    }
}
