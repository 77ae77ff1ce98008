//! Aggregation for `top`: pure code fed by decoded events and a clock. Each event goes
//! through the [`Classifier`] and its [`Contribution`] is added to the current window with
//! [`Model::ingest`]; [`Model::close_window`] turns the window into per-second rates,
//! percentiles and paths per process ([`Snapshot`]) and starts the next one. Drawing reads
//! snapshots only.

use std::collections::{HashMap, VecDeque};

use hdrhistogram::Histogram;
use serde::Serialize;

use ktls_trace_common::{LatHist, probes::Role};

use crate::{
    aggregate::{Batch, bucket_value},
    classify::{Classifier, Contribution, Path, PathBytes, Rules},
    event::{Comm, TraceEvent},
    session::Counts,
};

/// How much history the drill-down charts show.
pub const HISTORY_NS: u64 = 60_000_000_000;
/// A process stays in the table this long after its last activity (then it is dropped).
pub const LINGER_NS: u64 = HISTORY_NS;

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

/// Adds a log2 histogram of the kernel's (aggregate mode): each bucket as its middle.
fn record_log2(h: &mut Option<Histogram<u64>>, hist: &LatHist) {
    for (i, n) in hist.iter().enumerate().filter(|(_, n)| **n > 0) {
        if h.is_none() {
            *h = new_histogram();
        }
        if let Some(h) = h {
            let _ = h.record_n(bucket_value(i).clamp(1, h.high()), *n);
        }
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
    payload: PathBytes,
    ciphertext: u64,
    records: u64,
    /// kTLS sends whose record count the kernel did not tell.
    sends_without_records: u64,
    sendfile_calls: u64,
    sendfile_lat: Option<Histogram<u64>>,
    tls_lat: Option<Histogram<u64>>,
    active: bool,
}

impl Window {
    fn add(&mut self, c: &Contribution) {
        self.active = true;
        if let Some((path, bytes)) = c.payload {
            self.payload.add(path, bytes);
        }
        self.ciphertext += c.ciphertext;
        match (c.records, c.ktls) {
            (Some(r), _) => self.records += r,
            (None, Some(_)) => self.sends_without_records += c.calls,
            (None, None) => {}
        }
        if c.sendfile.is_some() {
            self.sendfile_calls += c.calls;
        }
        if let Some(l) = c.sendfile_latency_ns {
            record(&mut self.sendfile_lat, l);
        }
        if let Some(l) = c.tls_latency_ns {
            record(&mut self.tls_lat, l);
        }
    }

    fn reset(&mut self) {
        self.payload.reset();
        self.ciphertext = 0;
        self.records = 0;
        self.sends_without_records = 0;
        self.sendfile_calls = 0;
        if let Some(h) = &mut self.sendfile_lat {
            h.reset();
        }
        if let Some(h) = &mut self.tls_lat {
            h.reset();
        }
        self.active = false;
    }

    /// Records, unless only sends without a record count happened.
    fn records(&self) -> Option<u64> {
        (self.records > 0 || self.sends_without_records == 0).then_some(self.records)
    }
}

#[derive(Debug, Default)]
struct ConnState {
    win: Window,
    last_active_ns: u64,
    last_path: Option<Path>,
}

#[derive(Debug)]
struct ThreadState {
    comm: Comm,
    payload: u64,
    /// Payload since the thread was first seen: orders the drill-down when no thread
    /// sent in the window (the sender stays first between requests).
    total: u64,
    last_active_ns: u64,
}

#[derive(Debug)]
struct ProcState {
    name: Comm,
    win: Window,
    last_active_ns: u64,
    last_path: Option<Path>,
    history: VecDeque<Sample>,
    conns: HashMap<u64, ConnState>,
    threads: HashMap<u32, ThreadState>,
}

impl ProcState {
    fn new(name: Comm) -> ProcState {
        ProcState {
            name,
            win: Window::default(),
            last_active_ns: 0,
            last_path: None,
            history: VecDeque::new(),
            conns: HashMap::new(),
            threads: HashMap::new(),
        }
    }
}

/// One point of a process's throughput history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub at_ns: u64,
    pub payload_bps: f64,
    pub ciphertext_bps: f64,
    pub records_ps: f64,
}

/// One connection (socket) of a process in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnRow {
    #[serde(serialize_with = "sock_hex")]
    pub sock: u64,
    pub path: Option<Path>,
    pub payload_bps: f64,
    pub ciphertext_bps: f64,
    /// Had events in this window.
    pub active: bool,
}

fn sock_hex<S: serde::Serializer>(sock: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::event::sock_hex(*sock))
}

/// One thread of a process in one window (the drill-down).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadRow {
    pub tid: u32,
    pub comm: String,
    pub payload_bps: f64,
}

/// One process in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcRow {
    pub pid: u32,
    /// The process's name (its main thread's).
    pub comm: String,
    /// The path carrying most payload in this window (else the last one seen).
    pub path: Option<Path>,
    /// Had events in this window.
    pub active: bool,
    /// Payload bytes/s over all paths.
    pub payload_bps: f64,
    /// Payload bytes/s per path.
    pub paths_bps: PathRates,
    /// Plaintext bytes/s into kernel TLS.
    pub ktls_plaintext_bps: f64,
    /// Ciphertext bytes/s kernel TLS pushed into TCP.
    pub ciphertext_bps: f64,
    /// Kernel TLS records/s (None: this kernel does not tell).
    pub records_ps: Option<f64>,
    /// Mean plaintext bytes per kernel TLS record.
    pub mean_record: Option<f64>,
    pub sendfile_ps: f64,
    pub sendfile_p50_ns: Option<u64>,
    pub sendfile_p99_ns: Option<u64>,
    pub tls_p50_ns: Option<u64>,
    pub tls_p99_ns: Option<u64>,
    /// Share of payload that went through the kTLS splice path (0..=1).
    pub zero_copy: Option<f64>,
    /// What the rates above are made of: the window's totals.
    pub totals: WindowTotals,
    pub conns: Vec<ConnRow>,
    /// Its threads that sent payload in the last minute, busiest first.
    pub threads: Vec<ThreadRow>,
    /// Oldest first, at most [`HISTORY_NS`] back.
    #[serde(skip)]
    pub history: Vec<Sample>,
}

/// A process's totals in one window (for scripts: rates are these over `window_ns`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowTotals {
    /// Payload bytes per path.
    pub payload: PathBytes,
    pub ciphertext: u64,
    /// Kernel TLS records (None: this kernel does not tell).
    pub records: Option<u64>,
    pub sendfile_calls: u64,
}

/// Payload bytes/s per path.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PathRates(pub [f64; Path::ALL.len()]);

impl PathRates {
    pub fn get(&self, p: Path) -> f64 {
        self.0[p.index()]
    }
}

impl Serialize for PathRates {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(None)?;
        for p in Path::ALL.into_iter().filter(|p| self.get(*p) > 0.0) {
            m.serialize_entry(p.id(), &self.get(p))?;
        }
        m.end()
    }
}

/// Everything a view needs of one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Clock value when the window closed.
    pub at_ns: u64,
    /// Window length.
    pub window_ns: u64,
    pub events: u64,
    pub events_ps: f64,
    /// Ring-buffer records received since the start (0 when the kernel adds calls up).
    pub ring_records_total: u64,
    /// Events lost in the kernel since the start, and in this window.
    pub drops_total: u64,
    pub drops_window: u64,
    /// Why they were lost (`ring buffer full 2, skipped by the kernel 1`); empty without.
    pub drop_causes: String,
    pub undecodable_total: u64,
    /// Unordered; views sort.
    pub procs: Vec<ProcRow>,
}

/// The aggregation state.
#[derive(Debug)]
pub struct Model {
    classifier: Classifier,
    window_start_ns: u64,
    procs: HashMap<u32, ProcState>,
    events_window: u64,
    counts: Counts,
    drops_at_window_start: u64,
}

impl Model {
    /// A model whose first window starts at `now_ns`.
    pub fn new(rules: Rules, now_ns: u64) -> Model {
        Model {
            classifier: Classifier::new(rules),
            window_start_ns: now_ns,
            procs: HashMap::new(),
            events_window: 0,
            counts: Counts::default(),
            drops_at_window_start: 0,
        }
    }

    /// Adds one event to the current window.
    pub fn ingest(&mut self, e: &TraceEvent) {
        self.events_window += 1;
        let c = self.classifier.classify(e);
        self.add(e, c);
    }

    /// Adds what the kernel added up since the last read (aggregate mode): each key is
    /// classified as its calls would be one by one, kernel TLS sends first
    /// ([`Batch::ktls_first`]).
    pub fn ingest_aggregates(&mut self, batch: &Batch) {
        for a in batch.ktls_first() {
            self.events_window += a.calls;
            let c = self.classifier.classify_facts(&a.event, a.facts, a.calls);
            self.add(&a.event, c);
        }
        for l in &batch.latency {
            // The calls behind a latency were counted above, so the process is there.
            let Some(p) = self.procs.get_mut(&l.pid) else {
                continue;
            };
            match l.probe.role() {
                Role::Sendfile => record_log2(&mut p.win.sendfile_lat, &l.hist),
                _ => record_log2(&mut p.win.tls_lat, &l.hist),
            }
        }
    }

    fn add(&mut self, e: &TraceEvent, c: Contribution) {
        if c.is_empty() {
            return;
        }
        let p = self
            .procs
            .entry(c.pid)
            .or_insert_with(|| ProcState::new(c.name));
        if !c.on_behalf && p.name != c.name {
            // exec() renames a process; the latest name counts.
            p.name = c.name;
        }
        p.win.add(&c);
        if !c.on_behalf
            && let Some((_, bytes)) = c.payload.filter(|(_, b)| *b > 0)
        {
            let t = p.threads.entry(e.tid).or_insert(ThreadState {
                comm: e.comm,
                payload: 0,
                total: 0,
                last_active_ns: 0,
            });
            t.comm = e.comm;
            t.payload += bytes;
        }
        if let Some(s) = e.sock
            && (c.payload.is_some_and(|(_, b)| b > 0) || c.ciphertext > 0)
        {
            let cs = p.conns.entry(s).or_default();
            cs.win.active = true;
            if let Some((path, bytes)) = c.payload {
                cs.win.payload.add(path, bytes);
            }
            cs.win.ciphertext += c.ciphertext;
        }
    }

    /// Adds a batch of events.
    pub fn ingest_all(&mut self, events: &[TraceEvent]) {
        for e in events {
            self.ingest(e);
        }
    }

    /// The session's counts (events, drops, undecodable records) as of now.
    pub fn set_counts(&mut self, counts: Counts) {
        self.counts = counts;
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
        self.classifier.ktls_owner(sock)
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
                if let Some(path) = w.payload.main_path() {
                    p.last_path = Some(path);
                }
            }
            let ktls = w.payload.ktls();
            let records = w.records();
            let (sf50, sf99) = percentiles(&w.sendfile_lat);
            let (tl50, tl99) = percentiles(&w.tls_lat);
            p.history.push_back(Sample {
                at_ns: now_ns,
                payload_bps: rate(w.payload.total()),
                ciphertext_bps: rate(w.ciphertext),
                records_ps: rate(records.unwrap_or(0)),
            });
            while p
                .history
                .front()
                .is_some_and(|s| now_ns.saturating_sub(s.at_ns) > HISTORY_NS)
            {
                p.history.pop_front();
            }
            let conns = close_conns(&mut p.conns, now_ns, &rate);
            let threads = close_threads(&mut p.threads, now_ns, &rate);
            let mut paths_bps = PathRates::default();
            for path in Path::ALL {
                paths_bps.0[path.index()] = rate(w.payload.get(path));
            }
            rows.push(ProcRow {
                pid,
                comm: p.name.to_string(),
                path: w.payload.main_path().or(p.last_path),
                active: w.active,
                payload_bps: rate(w.payload.total()),
                paths_bps,
                ktls_plaintext_bps: rate(ktls),
                ciphertext_bps: rate(w.ciphertext),
                records_ps: records.map(rate),
                // No plaintext yet (the kTLS send is still in flight): no mean either.
                mean_record: records
                    .filter(|r| *r > 0 && ktls > 0)
                    .map(|r| ktls as f64 / r as f64),
                sendfile_ps: rate(w.sendfile_calls),
                sendfile_p50_ns: sf50,
                sendfile_p99_ns: sf99,
                tls_p50_ns: tl50,
                tls_p99_ns: tl99,
                zero_copy: w.payload.zero_copy_share(),
                totals: WindowTotals {
                    payload: w.payload,
                    ciphertext: w.ciphertext,
                    records,
                    sendfile_calls: w.sendfile_calls,
                },
                conns,
                threads,
                history: p.history.iter().copied().collect(),
            });
            p.win.reset();
        }
        self.procs
            .retain(|_, p| now_ns.saturating_sub(p.last_active_ns) <= LINGER_NS);
        rows.retain(|r| self.procs.contains_key(&r.pid));
        self.classifier.forget_idle(now_ns);
        let snap = Snapshot {
            at_ns: now_ns,
            window_ns,
            events: self.events_window,
            events_ps: rate(self.events_window),
            ring_records_total: self.counts.ring_records,
            drops_total: self.counts.drops(),
            drops_window: self
                .counts
                .drops()
                .saturating_sub(self.drops_at_window_start),
            drop_causes: self.counts.drop_causes(),
            undecodable_total: self.counts.undecodable,
            procs: rows,
        };
        self.window_start_ns = now_ns;
        self.events_window = 0;
        self.drops_at_window_start = self.counts.drops();
        snap
    }
}

fn close_conns(
    conns: &mut HashMap<u64, ConnState>,
    now_ns: u64,
    rate: &dyn Fn(u64) -> f64,
) -> Vec<ConnRow> {
    let mut rows = Vec::new();
    for (&sock, cs) in conns.iter_mut() {
        if cs.win.active {
            cs.last_active_ns = now_ns;
            if let Some(path) = cs.win.payload.main_path() {
                cs.last_path = Some(path);
            }
        }
        rows.push(ConnRow {
            sock,
            path: cs.win.payload.main_path().or(cs.last_path),
            payload_bps: rate(cs.win.payload.total()),
            ciphertext_bps: rate(cs.win.ciphertext),
            active: cs.win.active,
        });
        cs.win.reset();
    }
    conns.retain(|_, cs| now_ns.saturating_sub(cs.last_active_ns) <= LINGER_NS);
    rows.retain(|r| conns.contains_key(&r.sock));
    rows.sort_by(|a, b| {
        b.payload_bps
            .total_cmp(&a.payload_bps)
            .then(b.ciphertext_bps.total_cmp(&a.ciphertext_bps))
            .then(a.sock.cmp(&b.sock))
    });
    rows
}

fn close_threads(
    threads: &mut HashMap<u32, ThreadState>,
    now_ns: u64,
    rate: &dyn Fn(u64) -> f64,
) -> Vec<ThreadRow> {
    let mut rows = Vec::new();
    for (&tid, t) in threads.iter_mut() {
        if t.payload > 0 {
            t.last_active_ns = now_ns;
        }
        t.total += t.payload;
        rows.push((
            t.total,
            ThreadRow {
                tid,
                comm: t.comm.to_string(),
                payload_bps: rate(t.payload),
            },
        ));
        t.payload = 0;
    }
    threads.retain(|_, t| now_ns.saturating_sub(t.last_active_ns) <= LINGER_NS);
    rows.retain(|(_, r)| threads.contains_key(&r.tid));
    rows.sort_by(|(ta, a), (tb, b)| {
        b.payload_bps
            .total_cmp(&a.payload_bps)
            .then(tb.cmp(ta))
            .then(a.tid.cmp(&b.tid))
    });
    rows.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::classify::tests::{TLS13, ev, under};
    use ktls_trace_common::{Probe, msg};

    const SEC: u64 = 1_000_000_000;

    fn model() -> Model {
        Model::new(Rules::default(), 10 * SEC)
    }

    pub(crate) fn row(s: &Snapshot, pid: u32) -> &ProcRow {
        s.procs
            .iter()
            .find(|r| r.pid == pid)
            .unwrap_or_else(|| panic!("no row for pid {pid}: {s:?}"))
    }

    /// One 64 KiB splice of kTLS sendfile on 6.12, as the kernel reports it: the TCP
    /// pushes return first, then tls_sw_sendmsg (with the 4 records it closed), then
    /// do_sendfile.
    fn ktls_sendfile_612(pid: u32, sock: u64, lat: u64) -> Vec<TraceEvent> {
        let mut v = Vec::new();
        for _ in 0..4 {
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
        tls.records = Some(4);
        tls.tls = Some(TLS13);
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
            m.ingest_all(&ktls_sendfile_612(100, 7, 10_000 * (i + 1)));
        }
        // A 2-second window: everything per second is half the totals.
        let s = m.close_window(12 * SEC);
        assert_eq!(s.window_ns, 2 * SEC);
        assert_eq!(s.events, 60);
        assert_eq!(s.events_ps, 30.0);
        let r = row(&s, 100);
        assert_eq!(r.comm, "proc100");
        assert_eq!(r.path, Some(Path::KtlsSendfile));
        assert_eq!(r.payload_bps, 65_536.0 * 10.0 / 2.0);
        assert_eq!(r.paths_bps.get(Path::KtlsSendfile), r.payload_bps);
        assert_eq!(r.ktls_plaintext_bps, r.payload_bps);
        assert_eq!(r.ciphertext_bps, (16_406.0 * 4.0) * 10.0 / 2.0);
        assert_eq!(r.records_ps, Some(20.0));
        assert_eq!(r.mean_record, Some(16_384.0));
        assert_eq!(r.sendfile_ps, 5.0);
        assert_eq!(r.zero_copy, Some(1.0));
        assert_eq!(r.conns.len(), 1);
        assert_eq!(r.conns[0].sock, 7);
        assert_eq!(r.conns[0].path, Some(Path::KtlsSendfile));
        assert_eq!(r.conns[0].payload_bps, r.payload_bps);
        assert_eq!(r.conns[0].ciphertext_bps, r.ciphertext_bps);
        assert_eq!(r.threads.len(), 1);
        assert_eq!(
            (r.threads[0].tid, r.threads[0].comm.as_str()),
            (100, "proc100")
        );
        assert_eq!(r.history.len(), 1);
    }

    #[test]
    fn records_unknown_when_the_kernel_does_not_tell() {
        let mut m = model();
        let mut v = ktls_sendfile_612(100, 7, 10_000);
        for e in &mut v {
            e.records = None;
        }
        m.ingest_all(&v);
        let s = m.close_window(11 * SEC);
        let r = row(&s, 100);
        assert_eq!((r.records_ps, r.mean_record), (None, None));
        assert_eq!(r.ciphertext_bps, 16_406.0 * 4.0);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut m = model();
        // tls_sw latencies 1..=100 us; do_sendfile 2..=200 us.
        for i in 1..=100u64 {
            m.ingest_all(&ktls_sendfile_612(5, 1, i * 1_000));
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
        // The server writes 1000 bytes on kTLS socket 42 (one record) ...
        let mut w = ev(Probe::TlsSwSendmsg, 200, 1000, Some(42));
        w.comm = Comm::new("nginx");
        w.flags = Some(0);
        w.records = Some(1);
        m.ingest(&w);
        // ... and the tls tx worker pushes it later, outside any call of it.
        let mut push = ev(Probe::TcpSendmsgLocked, 33, 1022, Some(42));
        push.comm = Comm::new("kworker/1:2");
        m.ingest(&push);
        // A push by the worker on a socket never seen with kTLS stays with the worker.
        let mut other = ev(Probe::TcpSendmsgLocked, 33, 10, Some(43));
        other.comm = Comm::new("kworker/1:2");
        m.ingest(&other);
        let s = m.close_window(11 * SEC);
        let r = row(&s, 200);
        assert_eq!(r.comm, "nginx");
        assert_eq!(r.path, Some(Path::KtlsWrite));
        assert_eq!(r.ciphertext_bps, 1022.0);
        assert_eq!(r.records_ps, Some(1.0));
        assert_eq!(r.mean_record, Some(1000.0));
        assert_eq!(r.zero_copy, Some(0.0));
        assert_eq!(
            r.threads.len(),
            1,
            "the kworker is not one of nginx's threads"
        );
        let k = row(&s, 33);
        assert_eq!(k.comm, "kworker/1:2");
        assert_eq!(k.ciphertext_bps, 0.0);
        assert_eq!(k.path, Some(Path::Plain));
        assert_eq!(m.ktls_owner(42), Some(200));
    }

    #[test]
    fn rows_name_the_process_and_the_drill_down_its_threads() {
        let mut m = model();
        for (tid, name, bytes) in [(501, "wrk:worker_0", 300), (502, "wrk:worker_1", 700)] {
            let mut e = ev(Probe::TcpSendmsg, 500, bytes, Some(u64::from(tid)));
            e.tid = tid;
            e.comm = Comm::new(name);
            e.process = Some(Comm::new("envoy"));
            m.ingest(&e);
        }
        let s = m.close_window(11 * SEC);
        let r = row(&s, 500);
        assert_eq!(r.comm, "envoy");
        let threads: Vec<(&str, f64)> = r
            .threads
            .iter()
            .map(|t| (t.comm.as_str(), t.payload_bps))
            .collect();
        assert_eq!(threads, [("wrk:worker_1", 700.0), ("wrk:worker_0", 300.0)]);
        // A window in which no thread sent: the one that sent most stays first.
        let s = m.close_window(12 * SEC);
        let names: Vec<&str> = row(&s, 500)
            .threads
            .iter()
            .map(|t| t.comm.as_str())
            .collect();
        assert_eq!(names, ["wrk:worker_1", "wrk:worker_0"]);
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
        assert_eq!(u.records_ps, Some(0.0));
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
                sendfile_is_payload: true,
                ..Rules::default()
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
        let c = |drops, undecodable| Counts {
            ring_full: drops,
            undecodable,
            ..Counts::default()
        };
        m.set_counts(c(5, 0));
        let s = m.close_window(11 * SEC);
        assert_eq!((s.drops_total, s.drops_window), (5, 5));
        assert_eq!(s.drop_causes, "ring buffer full 5");
        m.set_counts(c(7, 0));
        let s = m.close_window(12 * SEC);
        assert_eq!((s.drops_total, s.drops_window), (7, 2));
        let s = m.close_window(13 * SEC);
        assert_eq!((s.drops_total, s.drops_window), (7, 0));
        m.set_counts(c(7, 1));
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
    fn exec_renames_the_process() {
        let mut m = model();
        let mut e = ev(Probe::TcpSendmsg, 4, 100, Some(1));
        m.ingest(&e);
        e.comm = Comm::new("new-name");
        m.ingest(&e);
        assert_eq!(row(&m.close_window(11 * SEC), 4).comm, "new-name");
    }

    #[test]
    fn snapshots_serialize_for_scripts() {
        let mut m = model();
        m.ingest_all(&ktls_sendfile_612(100, 7, 10_000));
        let s = m.close_window(11 * SEC);
        let v = serde_json::to_value(&s).unwrap();
        let p = &v["procs"][0];
        assert_eq!(p["path"], "ktls-sendfile");
        assert_eq!(p["paths_bps"]["ktls-sendfile"], 65_536.0);
        assert_eq!(p["conns"][0]["sock"], "0000000000000007");
        assert_eq!(v["events"], 6);
        assert!(p.get("history").is_none());
    }
}
