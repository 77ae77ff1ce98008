//! Aggregation for `top`: pure code fed by decoded events and a clock. Events are added
//! to the current window with [`Model::ingest`]; [`Model::close_window`] turns the window
//! into per-second rates, percentiles and paths per process ([`Snapshot`]) and starts the
//! next one. Drawing reads snapshots only.

use std::collections::{HashMap, VecDeque};

use hdrhistogram::Histogram;

use super::classify::{Owner, Path, Rules, classify};
use crate::event::TraceEvent;

/// How much history the drill-down charts show.
pub const HISTORY_NS: u64 = 60_000_000_000;
/// A process stays in the table this long after its last activity (then it is dropped).
pub const LINGER_NS: u64 = HISTORY_NS;
/// A kernel TLS socket is forgotten after this long without events.
pub const SOCK_FORGET_NS: u64 = 300_000_000_000;

const NPATHS: usize = Path::ALL.len();

/// Latency histogram bounds: 1 ns to 100 s, 2 significant digits (1% resolution).
fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000_000, 2).ok()
}

fn record(h: &mut Option<Histogram<u64>>, v: u64) {
    if h.is_none() {
        *h = new_histogram();
    }
    if let Some(h) = h {
        h.saturating_record(v.max(1));
    }
}

/// p50 and p99 of a window, when it has values.
fn percentiles(h: &Option<Histogram<u64>>) -> (Option<u64>, Option<u64>) {
    match h {
        Some(h) if !h.is_empty() => (
            Some(h.value_at_quantile(0.5)),
            Some(h.value_at_quantile(0.99)),
        ),
        _ => (None, None),
    }
}

/// Counters of one window, for a process or a connection.
#[derive(Debug, Default)]
struct Window {
    payload: [u64; NPATHS],
    ciphertext: u64,
    records: u64,
    sendfile_calls: u64,
    sendfile_lat: Option<Histogram<u64>>,
    tls_lat: Option<Histogram<u64>>,
    active: bool,
}

impl Window {
    fn reset(&mut self) {
        self.payload = [0; NPATHS];
        self.ciphertext = 0;
        self.records = 0;
        self.sendfile_calls = 0;
        if let Some(h) = &mut self.sendfile_lat {
            h.reset();
        }
        if let Some(h) = &mut self.tls_lat {
            h.reset();
        }
        self.active = false;
    }

    fn payload_total(&self) -> u64 {
        self.payload.iter().sum()
    }

    /// The path carrying most payload bytes (ties: the first in [`Path::ALL`]).
    fn main_path(&self) -> Option<Path> {
        let mut best: Option<(Path, u64)> = None;
        for p in Path::ALL {
            let b = self.payload[p.index()];
            if b > 0 && best.is_none_or(|(_, bb)| b > bb) {
                best = Some((p, b));
            }
        }
        best.map(|(p, _)| p)
    }

    fn ktls_plaintext(&self) -> u64 {
        Path::ALL
            .iter()
            .filter(|p| p.is_ktls())
            .map(|p| self.payload[p.index()])
            .sum()
    }
}

#[derive(Debug, Default)]
struct ConnState {
    win: Window,
    last_active_ns: u64,
    last_path: Option<Path>,
}

#[derive(Debug)]
struct ProcState {
    comm: String,
    win: Window,
    last_active_ns: u64,
    last_path: Option<Path>,
    history: VecDeque<Sample>,
    conns: HashMap<u64, ConnState>,
}

impl ProcState {
    fn new(comm: &str) -> ProcState {
        ProcState {
            comm: comm.to_string(),
            win: Window::default(),
            last_active_ns: 0,
            last_path: None,
            history: VecDeque::new(),
            conns: HashMap::new(),
        }
    }
}

/// Owner of a kernel TLS socket, learned from its kTLS sends.
#[derive(Debug, Clone)]
struct SockOwner {
    pid: u32,
    comm: String,
    last_ns: u64,
}

/// One point of a process's throughput history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ns: u64,
    pub payload_bps: f64,
    pub ciphertext_bps: f64,
    pub records_ps: f64,
}

/// One connection (socket) of a process in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnRow {
    pub sock: u64,
    pub path: Option<Path>,
    pub payload_bps: f64,
    pub ciphertext_bps: f64,
    /// Had events in this window.
    pub active: bool,
}

/// One process in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    pub pid: u32,
    pub comm: String,
    /// The path carrying most payload in this window (else the last one seen).
    pub path: Option<Path>,
    /// Had events in this window.
    pub active: bool,
    /// Payload bytes/s over all paths.
    pub payload_bps: f64,
    /// Plaintext bytes/s into kernel TLS.
    pub ktls_plaintext_bps: f64,
    /// Ciphertext bytes/s kernel TLS pushed into TCP.
    pub ciphertext_bps: f64,
    pub records_ps: f64,
    /// Mean plaintext bytes per kernel TLS record.
    pub mean_record: Option<f64>,
    pub sendfile_ps: f64,
    pub sendfile_p50_ns: Option<u64>,
    pub sendfile_p99_ns: Option<u64>,
    pub tls_p50_ns: Option<u64>,
    pub tls_p99_ns: Option<u64>,
    /// Share of payload that went through the kTLS splice path (0..=1).
    pub zero_copy: Option<f64>,
    pub conns: Vec<ConnRow>,
    /// Oldest first, at most [`HISTORY_NS`] back.
    pub history: Vec<Sample>,
}

/// Everything a view needs of one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Clock value when the window closed.
    pub at_ns: u64,
    /// Window length.
    pub window_ns: u64,
    pub events: u64,
    pub events_ps: f64,
    /// Events lost in the kernel since the start, and in this window.
    pub drops_total: u64,
    pub drops_window: u64,
    pub undecodable_total: u64,
    /// Unordered; views sort.
    pub procs: Vec<ProcRow>,
}

/// The aggregation state.
#[derive(Debug)]
pub struct Model {
    rules: Rules,
    window_start_ns: u64,
    procs: HashMap<u32, ProcState>,
    ktls_socks: HashMap<u64, SockOwner>,
    events_window: u64,
    drops_total: u64,
    drops_at_window_start: u64,
    undecodable_total: u64,
    ignore_before_ns: u64,
}

impl Model {
    /// A model whose first window starts at `now_ns`.
    pub fn new(rules: Rules, now_ns: u64) -> Model {
        Model {
            rules,
            window_start_ns: now_ns,
            procs: HashMap::new(),
            ktls_socks: HashMap::new(),
            events_window: 0,
            drops_total: 0,
            drops_at_window_start: 0,
            undecodable_total: 0,
            ignore_before_ns: 0,
        }
    }

    /// Ignores events that completed before `ts_ns`: what the kernel reported while the
    /// probes were still being attached one by one is incomplete (a call whose TCP
    /// pushes were seen but not its kTLS send, or the other way round).
    pub fn ignore_before(&mut self, ts_ns: u64) {
        self.ignore_before_ns = ts_ns;
    }

    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// Adds one event to the current window.
    pub fn ingest(&mut self, e: &TraceEvent) {
        if e.ts_ns < self.ignore_before_ns {
            return;
        }
        self.events_window += 1;
        let known = e.sock.and_then(|s| self.ktls_socks.get(&s));
        let c = classify(e, known.is_some(), &self.rules);
        if let Some(s) = c.ktls_sock {
            // Every kTLS send names its socket: update the owner in place, and copy the
            // command name only when the owner changed (not once per event).
            match self.ktls_socks.get_mut(&s) {
                Some(o) => {
                    if o.pid != e.pid || o.comm != e.comm {
                        o.pid = e.pid;
                        o.comm.clone_from(&e.comm);
                    }
                    o.last_ns = e.ts_ns;
                }
                None => {
                    self.ktls_socks.insert(
                        s,
                        SockOwner {
                            pid: e.pid,
                            comm: e.comm.clone(),
                            last_ns: e.ts_ns,
                        },
                    );
                }
            }
        } else if let Some(s) = e.sock
            && let Some(o) = self.ktls_socks.get_mut(&s)
        {
            o.last_ns = o.last_ns.max(e.ts_ns);
        }
        if c.is_empty() {
            return;
        }
        let (pid, comm) = match c.owner {
            Owner::Caller => (e.pid, e.comm.as_str()),
            Owner::Socket(s) => match self.ktls_socks.get(&s) {
                Some(o) => (o.pid, o.comm.as_str()),
                None => (e.pid, e.comm.as_str()),
            },
        };
        let p = self
            .procs
            .entry(pid)
            .or_insert_with(|| ProcState::new(comm));
        if c.owner == Owner::Caller && p.comm != e.comm {
            // exec() changes the command name; the latest one counts.
            p.comm = e.comm.clone();
        }
        let w = &mut p.win;
        w.active = true;
        if let Some((path, bytes)) = c.payload {
            w.payload[path.index()] += bytes;
        }
        w.ciphertext += c.ciphertext;
        w.records += u64::from(c.record);
        w.sendfile_calls += u64::from(c.sendfile_call);
        if let Some(l) = c.sendfile_latency_ns {
            record(&mut w.sendfile_lat, l);
        }
        if let Some(l) = c.tls_latency_ns {
            record(&mut w.tls_lat, l);
        }
        if let Some(s) = e.sock
            && (c.payload.is_some_and(|(_, b)| b > 0) || c.ciphertext > 0)
        {
            let cs = p.conns.entry(s).or_default();
            cs.win.active = true;
            if let Some((path, bytes)) = c.payload {
                cs.win.payload[path.index()] += bytes;
            }
            cs.win.ciphertext += c.ciphertext;
        }
    }

    /// Records that a ring-buffer record could not be decoded.
    /// Takes in a batch from the tracer (decoded events and undecodable records).
    pub fn ingest_batch(&mut self, batch: &mut Vec<Result<TraceEvent, crate::event::DecodeError>>) {
        for item in batch.drain(..) {
            match item {
                Ok(e) => self.ingest(&e),
                Err(_) => self.undecodable(),
            }
        }
    }

    pub fn undecodable(&mut self) {
        self.undecodable_total += 1;
    }

    /// The kernel's cumulative drop counter (read from the tracer).
    pub fn set_drops(&mut self, total: u64) {
        self.drops_total = total;
    }

    /// Drops the processes `gone` says have exited, unless they were active in the window
    /// `snap` describes (their last numbers are still shown once); removes them from
    /// `snap` too.
    pub fn forget_exited(&mut self, snap: &mut Snapshot, gone: impl Fn(u32) -> bool) {
        let mut forgotten = Vec::new();
        snap.procs.retain(|r| {
            let drop = !r.active && gone(r.pid);
            if drop {
                forgotten.push(r.pid);
            }
            !drop
        });
        for pid in forgotten {
            self.procs.remove(&pid);
        }
    }

    /// Is this socket known to be a kernel TLS socket, and whose?
    pub fn ktls_owner(&self, sock: u64) -> Option<u32> {
        self.ktls_socks.get(&sock).map(|o| o.pid)
    }

    /// Closes the current window at `now_ns` and starts the next one.
    pub fn close_window(&mut self, now_ns: u64) -> Snapshot {
        let window_ns = now_ns.saturating_sub(self.window_start_ns).max(1);
        let secs = window_ns as f64 / 1e9;
        let rate = |n: u64| n as f64 / secs;
        let mut rows = Vec::new();
        for (&pid, p) in &mut self.procs {
            let w = &p.win;
            if w.active {
                p.last_active_ns = now_ns;
                if let Some(path) = w.main_path() {
                    p.last_path = Some(path);
                }
            }
            let total = w.payload_total();
            let ktls = w.ktls_plaintext();
            let (sf50, sf99) = percentiles(&w.sendfile_lat);
            let (tl50, tl99) = percentiles(&w.tls_lat);
            let sample = Sample {
                at_ns: now_ns,
                payload_bps: rate(total),
                ciphertext_bps: rate(w.ciphertext),
                records_ps: rate(w.records),
            };
            p.history.push_back(sample);
            while p
                .history
                .front()
                .is_some_and(|s| now_ns.saturating_sub(s.at_ns) > HISTORY_NS)
            {
                p.history.pop_front();
            }
            let mut conns = Vec::new();
            for (&sock, cs) in &mut p.conns {
                if cs.win.active {
                    cs.last_active_ns = now_ns;
                    if let Some(path) = cs.win.main_path() {
                        cs.last_path = Some(path);
                    }
                }
                conns.push(ConnRow {
                    sock,
                    path: cs.win.main_path().or(cs.last_path),
                    payload_bps: rate(cs.win.payload_total()),
                    ciphertext_bps: rate(cs.win.ciphertext),
                    active: cs.win.active,
                });
                cs.win.reset();
            }
            p.conns
                .retain(|_, cs| now_ns.saturating_sub(cs.last_active_ns) <= LINGER_NS);
            conns.sort_by(|a, b| {
                b.payload_bps
                    .total_cmp(&a.payload_bps)
                    .then(b.ciphertext_bps.total_cmp(&a.ciphertext_bps))
                    .then(a.sock.cmp(&b.sock))
            });
            rows.push(ProcRow {
                pid,
                comm: p.comm.clone(),
                path: w.main_path().or(p.last_path),
                active: w.active,
                payload_bps: rate(total),
                ktls_plaintext_bps: rate(ktls),
                ciphertext_bps: rate(w.ciphertext),
                records_ps: rate(w.records),
                // No plaintext yet (the kTLS send is still in flight): no mean either.
                mean_record: (w.records > 0 && ktls > 0).then(|| ktls as f64 / w.records as f64),
                sendfile_ps: rate(w.sendfile_calls),
                sendfile_p50_ns: sf50,
                sendfile_p99_ns: sf99,
                tls_p50_ns: tl50,
                tls_p99_ns: tl99,
                zero_copy: (total > 0)
                    .then(|| w.payload[Path::KtlsSendfile.index()] as f64 / total as f64),
                conns,
                history: p.history.iter().copied().collect(),
            });
            p.win.reset();
        }
        self.procs
            .retain(|_, p| now_ns.saturating_sub(p.last_active_ns) <= LINGER_NS);
        rows.retain(|r| self.procs.contains_key(&r.pid));
        self.ktls_socks
            .retain(|_, o| now_ns.saturating_sub(o.last_ns) <= SOCK_FORGET_NS);
        let snap = Snapshot {
            at_ns: now_ns,
            window_ns,
            events: self.events_window,
            events_ps: rate(self.events_window),
            drops_total: self.drops_total,
            drops_window: self.drops_total.saturating_sub(self.drops_at_window_start),
            undecodable_total: self.undecodable_total,
            procs: rows,
        };
        self.window_start_ns = now_ns;
        self.events_window = 0;
        self.drops_at_window_start = self.drops_total;
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::classify::tests::{ev, under};
    use ktls_trace_common::{Probe, msg};

    const SEC: u64 = 1_000_000_000;

    fn model() -> Model {
        Model::new(Rules::default(), 10 * SEC)
    }

    fn row(s: &Snapshot, pid: u32) -> &ProcRow {
        s.procs
            .iter()
            .find(|r| r.pid == pid)
            .unwrap_or_else(|| panic!("no row for pid {pid}: {s:?}"))
    }

    /// One 64 KiB splice of kTLS sendfile on 6.12, as the kernel reports it: the TCP
    /// pushes and records return first, then tls_sw_sendmsg, then do_sendfile.
    fn ktls_sendfile_612(pid: u32, sock: u64, lat: u64) -> Vec<TraceEvent> {
        let mut v = Vec::new();
        for _ in 0..4 {
            let mut rec = under(
                ev(Probe::TlsPushRecord, pid, 0, Some(sock)),
                Probe::TlsSwSendmsg,
                Probe::DoSendfile,
            );
            rec.flags = Some(msg::MSG_MORE);
            v.push(rec);
            let mut push = under(
                ev(Probe::TcpSendmsgLocked, pid, 16_384 + 22, Some(sock)),
                Probe::TlsSwSendmsg,
                Probe::DoSendfile,
            );
            push.flags = Some(msg::MSG_SPLICE_PAGES);
            v.push(push);
        }
        let mut tls = under(
            ev(Probe::TlsSwSendmsg, pid, 65_536, Some(sock)),
            Probe::DoSendfile,
            Probe::DoSendfile,
        );
        tls.flags = Some(msg::MSG_SPLICE_PAGES | msg::MSG_MORE);
        tls.latency_ns = Some(lat);
        v.push(tls);
        let mut sf = ev(Probe::DoSendfile, pid, 65_536, None);
        sf.latency_ns = Some(lat * 2);
        v.push(sf);
        v
    }

    #[test]
    fn rates_paths_and_records_for_ktls_sendfile() {
        let mut m = model();
        for i in 0..10 {
            for e in ktls_sendfile_612(100, 7, 10_000 * (i + 1)) {
                m.ingest(&e);
            }
        }
        // A 2-second window: everything per second is half the totals.
        let s = m.close_window(12 * SEC);
        assert_eq!(s.window_ns, 2 * SEC);
        assert_eq!(s.events, 100);
        assert_eq!(s.events_ps, 50.0);
        let r = row(&s, 100);
        assert_eq!(r.comm, "proc100");
        assert_eq!(r.path, Some(Path::KtlsSendfile));
        assert_eq!(r.payload_bps, 65_536.0 * 10.0 / 2.0);
        assert_eq!(r.ktls_plaintext_bps, r.payload_bps);
        assert_eq!(r.ciphertext_bps, (16_406.0 * 4.0) * 10.0 / 2.0);
        assert_eq!(r.records_ps, 20.0);
        assert_eq!(r.mean_record, Some(16_384.0));
        assert_eq!(r.sendfile_ps, 5.0);
        assert_eq!(r.zero_copy, Some(1.0));
        assert_eq!(r.conns.len(), 1);
        assert_eq!(r.conns[0].sock, 7);
        assert_eq!(r.conns[0].path, Some(Path::KtlsSendfile));
        assert_eq!(r.conns[0].payload_bps, r.payload_bps);
        assert_eq!(r.conns[0].ciphertext_bps, r.ciphertext_bps);
        assert_eq!(r.history.len(), 1);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut m = model();
        // tls_sw latencies 1..=100 us; do_sendfile 2..=200 us.
        for i in 1..=100u64 {
            for e in ktls_sendfile_612(5, 1, i * 1_000) {
                m.ingest(&e);
            }
        }
        let s = m.close_window(11 * SEC);
        let r = row(&s, 5);
        let within = |got: Option<u64>, want: u64| {
            let g = got.unwrap_or(0) as f64;
            assert!(
                (g - want as f64).abs() <= want as f64 * 0.01 + 1.0,
                "got {got:?}, want about {want}"
            );
        };
        within(r.tls_p50_ns, 50_000);
        within(r.tls_p99_ns, 99_000);
        within(r.sendfile_p50_ns, 100_000);
        within(r.sendfile_p99_ns, 198_000);
        // The next window starts empty.
        let s = m.close_window(12 * SEC);
        let r = row(&s, 5);
        assert_eq!((r.tls_p50_ns, r.sendfile_p99_ns), (None, None));
        assert_eq!(r.payload_bps, 0.0);
        assert!(!r.active);
        assert_eq!(r.path, Some(Path::KtlsSendfile), "the last path is kept");
    }

    #[test]
    fn kworker_pushes_belong_to_the_socket_owner() {
        let mut m = model();
        // The server writes 1000 bytes on kTLS socket 42 ...
        let mut w = ev(Probe::TlsSwSendmsg, 200, 1000, Some(42));
        w.comm = "nginx".into();
        w.flags = Some(0);
        m.ingest(&w);
        // ... and the tls tx worker flushes the record later, outside any call of it.
        let mut rec = ev(Probe::TlsPushRecord, 33, 0, Some(42));
        rec.comm = "kworker/1:2".into();
        let mut push = ev(Probe::TcpSendmsgLocked, 33, 1022, Some(42));
        push.comm = "kworker/1:2".into();
        m.ingest(&rec);
        m.ingest(&push);
        // A push by the worker on a socket never seen with kTLS stays with the worker.
        let mut other = ev(Probe::TcpSendmsgLocked, 33, 10, Some(43));
        other.comm = "kworker/1:2".into();
        m.ingest(&other);
        let s = m.close_window(11 * SEC);
        let r = row(&s, 200);
        assert_eq!(r.comm, "nginx");
        assert_eq!(r.path, Some(Path::KtlsWrite));
        assert_eq!(r.ciphertext_bps, 1022.0);
        assert_eq!(r.records_ps, 1.0);
        assert_eq!(r.mean_record, Some(1000.0));
        assert_eq!(r.zero_copy, Some(0.0));
        let k = row(&s, 33);
        assert_eq!(k.comm, "kworker/1:2");
        assert_eq!(k.ciphertext_bps, 0.0);
        assert_eq!(k.path, Some(Path::Plain));
        assert_eq!(m.ktls_owner(42), Some(200));
    }

    #[test]
    fn path_is_the_majority_and_zero_copy_share_is_splice_bytes() {
        let mut m = model();
        // 3000 bytes kTLS sendfile, 1000 kTLS write, 500 plain.
        let mut a = ev(Probe::TlsSwSendpage, 9, 3000, Some(1));
        a.parent = Some(Probe::DoSendfile);
        m.ingest(&a);
        let mut b = ev(Probe::TlsSwSendmsg, 9, 1000, Some(1));
        b.flags = Some(0);
        m.ingest(&b);
        m.ingest(&ev(Probe::TcpSendmsg, 9, 500, Some(2)));
        let s = m.close_window(11 * SEC);
        let r = row(&s, 9);
        assert_eq!(r.path, Some(Path::KtlsSendfile));
        assert_eq!(r.payload_bps, 4500.0);
        assert_eq!(r.ktls_plaintext_bps, 4000.0);
        assert_eq!(r.zero_copy, Some(3000.0 / 4500.0));
        assert_eq!(r.conns.len(), 2);
        assert_eq!(r.conns[0].sock, 1, "busiest connection first");
        assert_eq!(r.conns[1].path, Some(Path::Plain));
        // Next window: mostly kTLS write.
        m.ingest(&b);
        m.ingest(&b);
        let s = m.close_window(12 * SEC);
        assert_eq!(row(&s, 9).path, Some(Path::KtlsWrite));
    }

    #[test]
    fn userspace_tls_and_plain_sendfile() {
        let mut m = model();
        let mut tls = ev(Probe::TcpSendmsg, 1, 16_406, Some(1));
        tls.head = Some([0x17, 3, 3, 0x40, 0x11, 1, 2, 3]);
        m.ingest(&tls);
        // Its nested tcp_sendmsg_locked adds nothing.
        m.ingest(&under(
            ev(Probe::TcpSendmsgLocked, 1, 16_406, Some(1)),
            Probe::TcpSendmsg,
            Probe::TcpSendmsg,
        ));
        // Plain sendfile on 6.1.
        m.ingest(&under(
            ev(Probe::DoTcpSendpages, 2, 4096, Some(2)),
            Probe::DoSendfile,
            Probe::DoSendfile,
        ));
        m.ingest(&ev(Probe::DoSendfile, 2, 4096, None));
        let s = m.close_window(11 * SEC);
        let u = row(&s, 1);
        assert_eq!(u.path, Some(Path::UserspaceTls));
        assert_eq!(u.payload_bps, 16_406.0);
        assert_eq!(u.ciphertext_bps, 0.0);
        assert_eq!(u.zero_copy, Some(0.0));
        assert_eq!(u.records_ps, 0.0);
        assert_eq!(u.mean_record, None);
        let p = row(&s, 2);
        assert_eq!(p.path, Some(Path::PlainSendfile));
        assert_eq!(p.payload_bps, 4096.0);
        assert_eq!(p.sendfile_ps, 1.0);
        assert_eq!(p.tls_p50_ns, None);
    }

    #[test]
    fn tracepoint_mode_plain_sendfile() {
        let mut m = model();
        m.ingest(&under(
            ev(Probe::SockSendLength, 3, 65_536, Some(8)),
            Probe::Sendfile64,
            Probe::Sendfile64,
        ));
        m.ingest(&ev(Probe::Sendfile64, 3, 65_536, None));
        let s = m.close_window(11 * SEC);
        let r = row(&s, 3);
        assert_eq!(r.path, Some(Path::PlainSendfile));
        assert_eq!(r.payload_bps, 65_536.0);
        assert_eq!(r.sendfile_ps, 1.0);
        assert!(r.sendfile_p50_ns.is_some());
        // Without sock_send_length, sendfile64's bytes are the payload.
        let mut m = Model::new(
            Rules {
                sendfile64_is_payload: true,
            },
            0,
        );
        m.ingest(&ev(Probe::Sendfile64, 3, 1000, None));
        let s = m.close_window(SEC);
        assert_eq!(row(&s, 3).payload_bps, 1000.0);
        assert_eq!(row(&s, 3).path, Some(Path::PlainSendfile));
    }

    #[test]
    fn drops_per_window_and_total() {
        let mut m = model();
        m.set_drops(5);
        let s = m.close_window(11 * SEC);
        assert_eq!((s.drops_total, s.drops_window), (5, 5));
        m.set_drops(7);
        let s = m.close_window(12 * SEC);
        assert_eq!((s.drops_total, s.drops_window), (7, 2));
        let s = m.close_window(13 * SEC);
        assert_eq!((s.drops_total, s.drops_window), (7, 0));
        m.undecodable();
        assert_eq!(m.close_window(14 * SEC).undecodable_total, 1);
    }

    #[test]
    fn idle_processes_linger_then_go_and_history_is_bounded() {
        let mut m = model();
        m.ingest(&ev(Probe::TcpSendmsg, 4, 100, Some(1)));
        let mut t = 11 * SEC;
        let s = m.close_window(t);
        assert_eq!(s.procs.len(), 1);
        for _ in 0..60 {
            t += SEC;
            m.ingest(&ev(Probe::TcpSendmsg, 5, 100, Some(2)));
            let s = m.close_window(t);
            assert!(row(&s, 5).history.len() <= 61);
        }
        let s = m.close_window(t + SEC);
        assert!(s.procs.iter().all(|r| r.pid != 4), "idle for over a minute");
        let r = row(&s, 5);
        assert!(r.history.len() >= 60 && r.history.len() <= 61);
        assert!(r.history.windows(2).all(|w| w[0].at_ns < w[1].at_ns));
        // Events that count for nobody make no row.
        let mut m = model();
        m.ingest(&under(
            ev(Probe::TcpSendmsgLocked, 6, 1, Some(1)),
            Probe::TcpSendmsg,
            Probe::TcpSendmsg,
        ));
        let s = m.close_window(11 * SEC);
        assert!(s.procs.is_empty());
        assert_eq!(s.events, 1);
    }

    #[test]
    fn exited_processes_go_after_their_last_active_window() {
        let mut m = model();
        m.ingest(&ev(Probe::TcpSendmsg, 4, 100, Some(1)));
        m.ingest(&ev(Probe::TcpSendmsg, 5, 100, Some(2)));
        let mut s = m.close_window(11 * SEC);
        m.forget_exited(&mut s, |_| true);
        assert_eq!(s.procs.len(), 2, "active in the window: still shown");
        m.ingest(&ev(Probe::TcpSendmsg, 5, 100, Some(2)));
        let mut s = m.close_window(12 * SEC);
        m.forget_exited(&mut s, |pid| pid == 4);
        assert_eq!(s.procs.len(), 1);
        assert_eq!(s.procs[0].pid, 5);
        assert!(m.close_window(13 * SEC).procs.iter().all(|r| r.pid != 4));
    }

    #[test]
    fn events_from_before_the_start_are_ignored() {
        let mut m = model();
        m.ignore_before(5 * SEC);
        let mut early = ev(Probe::TcpSendmsg, 4, 100, Some(1));
        early.ts_ns = 4 * SEC;
        m.ingest(&early);
        let mut late = early.clone();
        late.ts_ns = 6 * SEC;
        late.pid = 5;
        m.ingest(&late);
        let s = m.close_window(11 * SEC);
        assert_eq!(s.events, 1);
        assert_eq!(s.procs.len(), 1);
        assert_eq!(s.procs[0].pid, 5);
    }

    #[test]
    fn exec_renames_the_process() {
        let mut m = model();
        let mut e = ev(Probe::TcpSendmsg, 4, 100, Some(1));
        m.ingest(&e);
        e.comm = "new-name".into();
        m.ingest(&e);
        assert_eq!(row(&m.close_window(11 * SEC), 4).comm, "new-name");
    }
}
