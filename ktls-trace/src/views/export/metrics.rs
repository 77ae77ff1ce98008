//! What `export` serves, pure: cumulative totals per process built from the session's
//! batches (through the same classifier as `top`), the cardinality cap, and the encoding
//! of a [`Snapshot`] in the Prometheus text format or OpenMetrics (prometheus-client).
//!
//! [`METRICS`] is the one list of what is exposed: the encoder takes names, types and
//! help from it, and tests check the output and docs/export.md against it.

use std::{borrow::Cow, collections::BTreeMap, collections::HashMap, sync::Arc};

use ktls_trace_common::{LAT_BUCKETS, LatHist, probes::Role};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, MetricEncoder},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use super::By;
use crate::{
    aggregate::{Batch, bucket_value},
    classify::{Classifier, Contribution, Path, PathBytes, Rules},
    event::Comm,
    inthash::IntMap,
    session::Counts,
};

/// The prefix of every metric.
pub const PREFIX: &str = "ktls_trace";

/// The `comm` label of the series that processes beyond the cap are added up in.
pub const OTHER: &str = "_other";

/// With `--by pid`, a process's series goes once the process has exited and sent nothing
/// for this long (the last scrapes have seen its final numbers by then).
pub const EVICT_EXITED_NS: u64 = 5 * 60 * 1_000_000_000;

/// With `--by comm`, a name's series goes after this long without a byte: names of
/// short-lived processes must not hold the cap's places for ever. A name that comes back
/// starts from zero, which Prometheus' `rate()` and `increase()` read as a counter reset.
pub const EVICT_IDLE_COMM_NS: u64 = 60 * 60 * 1_000_000_000;

/// Histogram bucket bounds: 2^k ns for these k (about 1 µs to 17 s), then +Inf. The kernel
/// counts latencies in log2 buckets, so each bound is exact.
const LE_LOG2_NS: std::ops::RangeInclusive<usize> = 10..=34;

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

/// The base unit a metric is in (part of its name, Prometheus convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseUnit {
    Bytes,
    Seconds,
}

/// One exposed metric. `labels` names the per-process labels `proc` (`comm`, and `pid`
/// with `--by pid`) as `"comm[,pid]"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// Without prefix, unit and `_total`.
    pub base: &'static str,
    pub unit: Option<BaseUnit>,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl MetricDef {
    /// The name as exposed (what a PromQL query names; a histogram's series add
    /// `_bucket`, `_sum` and `_count`).
    pub fn name(&self) -> String {
        let mut n = format!("{PREFIX}_{}", self.base);
        match self.unit {
            Some(BaseUnit::Bytes) => n.push_str("_bytes"),
            Some(BaseUnit::Seconds) => n.push_str("_seconds"),
            None => {}
        }
        if self.kind == Kind::Counter {
            n.push_str("_total");
        }
        n
    }

    fn unit(&self) -> Option<Unit> {
        self.unit.map(|u| match u {
            BaseUnit::Bytes => Unit::Bytes,
            BaseUnit::Seconds => Unit::Seconds,
        })
    }
}

const PROC: &[&str] = &["comm[,pid]"];

macro_rules! def {
    ($base:literal, $unit:expr, $kind:ident, [$($l:literal),*], $help:literal) => {
        MetricDef { base: $base, unit: $unit, kind: Kind::$kind, labels: &[$($l),*], help: $help }
    };
}

/// Every metric `export` serves, in the order it serves them.
pub const METRICS: &[MetricDef] = &[
    def!(
        "build_info",
        None,
        Gauge,
        ["version", "kernel_release", "backend"],
        "Always 1: the ktls-trace version, the kernel release and the probe backend (kprobe or tracepoint)."
    ),
    MetricDef {
        base: "payload",
        unit: Some(BaseUnit::Bytes),
        kind: Kind::Counter,
        labels: &["comm[,pid]", "path"],
        help: "Payload bytes sent, by the path they took: ktls_sendfile (zero-copy), ktls_write, ktls_device (NIC offload), userspace_tls, plain_sendfile, plain.",
    },
    MetricDef {
        base: "ktls_ciphertext",
        unit: Some(BaseUnit::Bytes),
        kind: Kind::Counter,
        labels: PROC,
        help: "Bytes kernel TLS handed to TCP: payload plus record headers and tags.",
    },
    MetricDef {
        base: "ktls_records",
        unit: None,
        kind: Kind::Counter,
        labels: PROC,
        help: "TLS records kernel TLS closed.",
    },
    MetricDef {
        base: "sendfile_calls",
        unit: None,
        kind: Kind::Counter,
        labels: PROC,
        help: "sendfile(2) calls that completed.",
    },
    MetricDef {
        base: "sendfile_duration",
        unit: Some(BaseUnit::Seconds),
        kind: Kind::Histogram,
        labels: PROC,
        help: "Time in sendfile(2) (log2 buckets; _sum is estimated from the bucket middles, within -25%/+50%).",
    },
    MetricDef {
        base: "ktls_send_duration",
        unit: Some(BaseUnit::Seconds),
        kind: Kind::Histogram,
        labels: PROC,
        help: "Time in a kernel TLS send call (log2 buckets; _sum is estimated from the bucket middles, within -25%/+50%).",
    },
    def!(
        "calls",
        None,
        Counter,
        [],
        "Completed calls on the traced path that were counted."
    ),
    def!(
        "events_dropped",
        None,
        Counter,
        ["cause"],
        "Calls the tracer could not count, by cause: ring_full, in_flight_full, aggregates_full, returns_missed, skipped_by_kernel."
    ),
    def!(
        "probe_state",
        None,
        Gauge,
        ["probe", "state"],
        "1 for each probe's state: attached, waiting (for the tls module), skipped (not on this kernel or not needed) or lost (the kernel refused it)."
    ),
    def!(
        "tls_module_loaded",
        None,
        Gauge,
        [],
        "1 when kernel TLS is available to sockets now (the tls module is live, or TLS is built in)."
    ),
    def!(
        "kernel_tls_sessions",
        None,
        Gauge,
        ["direction", "mode"],
        "Kernel TLS sessions open now (/proc/net/tls_stat TlsCurr*): direction tx or rx, mode sw or device."
    ),
    def!(
        "kernel_tls_sessions_opened",
        None,
        Counter,
        ["direction", "mode"],
        "Kernel TLS sessions opened since boot (/proc/net/tls_stat TlsTxSw, TlsRxSw, TlsTxDevice, TlsRxDevice)."
    ),
    def!(
        "kernel_tls_errors",
        None,
        Counter,
        ["kind"],
        "Kernel TLS errors since boot (/proc/net/tls_stat: decrypt errors and retries, device resyncs, padding violations, rekey errors)."
    ),
    def!(
        "series",
        None,
        Gauge,
        [],
        "Processes (label sets) with series of their own now."
    ),
    def!(
        "series_limit",
        None,
        Gauge,
        [],
        "The most processes that get series of their own (--max-series)."
    ),
    def!(
        "series_folded",
        None,
        Counter,
        [],
        "Calls of processes beyond --max-series, added up under comm=\"_other\"."
    ),
];

/// Looks a metric up by its base name (a programming error if absent: tested).
fn def(base: &str) -> &'static MetricDef {
    METRICS
        .iter()
        .find(|d| d.base == base)
        .unwrap_or(&METRICS[0])
}

/// A log2 latency histogram summed over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Log2Hist(LatHist);

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist([0; LAT_BUCKETS])
    }
}

impl Log2Hist {
    fn add(&mut self, h: &LatHist) {
        for (a, b) in self.0.iter_mut().zip(h) {
            *a = a.saturating_add(*b);
        }
    }

    fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// (upper bound in seconds, count in this bucket only) per exposed bucket, the last
    /// one +Inf; bucket `i` of the kernel counts `[2^(i-1), 2^i)` ns, so everything up
    /// to bucket `k` is `<= 2^k` ns.
    fn buckets(&self) -> Vec<(f64, u64)> {
        let first = *LE_LOG2_NS.start();
        let last = *LE_LOG2_NS.end();
        let mut out = Vec::with_capacity(LE_LOG2_NS.count() + 1);
        out.push((
            (1u64 << first) as f64 / 1e9,
            self.0[..=first].iter().sum::<u64>(),
        ));
        for k in first + 1..=last {
            out.push(((1u64 << k) as f64 / 1e9, self.0[k]));
        }
        out.push((f64::INFINITY, self.0[last + 1..].iter().sum()));
        out
    }

    /// The sum in seconds, from each bucket's middle: the kernel keeps no exact sum.
    fn sum_seconds(&self) -> f64 {
        self.0
            .iter()
            .enumerate()
            .map(|(i, n)| *n as f64 * bucket_value(i) as f64)
            .sum::<f64>()
            / 1e9
    }
}

/// One process's (or one name's) totals since `export` started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcTotals {
    pub payload: PathBytes,
    pub ciphertext: u64,
    pub records: u64,
    pub sendfile_calls: u64,
    pub sendfile_latency: Log2Hist,
    pub ktls_latency: Log2Hist,
    last_active_ns: u64,
}

impl ProcTotals {
    fn add(&mut self, c: &Contribution, now_ns: u64) {
        if let Some((path, bytes)) = c.payload {
            self.payload.add(path, bytes);
        }
        self.ciphertext += c.ciphertext;
        self.records += c.records.unwrap_or(0);
        if c.sendfile.is_some() {
            self.sendfile_calls += c.calls;
        }
        self.last_active_ns = now_ns;
    }
}

/// Whose series: a process name (and PID with `--by pid`), or everything beyond the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesKey {
    Proc { comm: Comm, pid: Option<u32> },
    Other,
}

impl SeriesKey {
    fn comm(&self) -> &str {
        match self {
            SeriesKey::Proc { comm, .. } => comm.as_str(),
            SeriesKey::Other => OTHER,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            SeriesKey::Proc { pid, .. } => *pid,
            SeriesKey::Other => None,
        }
    }
}

/// The running totals: the classifier, one [`ProcTotals`] per admitted key, and what
/// the cap folded.
#[derive(Debug)]
pub struct Totals {
    classifier: Classifier,
    by: By,
    limit: usize,
    series: HashMap<SeriesKey, ProcTotals>,
    /// Whose series each PID's latencies go to (the key its calls went to).
    owner: IntMap<u32, SeriesKey>,
    folded: u64,
}

impl Totals {
    pub fn new(rules: Rules, by: By, limit: usize) -> Totals {
        Totals {
            classifier: Classifier::new(rules),
            by,
            limit: limit.max(1),
            series: HashMap::new(),
            owner: IntMap::default(),
            folded: 0,
        }
    }

    /// Adds what the kernel added up since the last read.
    pub fn ingest(&mut self, batch: &Batch, now_ns: u64) {
        for a in batch.ktls_first() {
            let c = self.classifier.classify_facts(&a.event, a.facts, a.calls);
            if c.is_empty() {
                continue;
            }
            let key = self.admit(&c);
            if key == SeriesKey::Other {
                self.folded += c.calls;
            }
            self.owner.insert(c.pid, key);
            self.series.entry(key).or_default().add(&c, now_ns);
        }
        for l in &batch.latency {
            // The calls behind a latency were counted above or in an earlier batch; a
            // process whose calls were not (they added nothing) goes with the rest.
            let key = self.owner.get(&l.pid).copied().unwrap_or(SeriesKey::Other);
            let t = self.series.entry(key).or_default();
            match l.probe.role() {
                Role::Sendfile => t.sendfile_latency.add(&l.hist),
                Role::KtlsSend | Role::KtlsDevice | Role::KtlsFlush => t.ktls_latency.add(&l.hist),
                _ => {}
            }
            t.last_active_ns = now_ns;
        }
        self.classifier.forget_idle(now_ns);
    }

    /// The key a contribution's numbers go to: its own while there is room under the cap
    /// (the `_other` series does not count against it), else [`SeriesKey::Other`].
    fn admit(&self, c: &Contribution) -> SeriesKey {
        let key = SeriesKey::Proc {
            comm: c.name,
            pid: (self.by == By::Pid).then_some(c.pid),
        };
        if self.series.contains_key(&key) || self.admitted() < self.limit {
            key
        } else {
            SeriesKey::Other
        }
    }

    fn admitted(&self) -> usize {
        self.series.len() - usize::from(self.series.contains_key(&SeriesKey::Other))
    }

    /// Forgets series whose time is over: with `--by pid`, processes that have exited
    /// (`alive` says) and were idle [`EVICT_EXITED_NS`]; with `--by comm`, names idle
    /// [`EVICT_IDLE_COMM_NS`]. Never `_other`: its counts must not go down.
    pub fn evict(&mut self, now_ns: u64, alive: impl Fn(u32) -> bool) {
        let by = self.by;
        self.series.retain(|k, t| {
            let idle = now_ns.saturating_sub(t.last_active_ns);
            match (k, by) {
                (SeriesKey::Other, _) => true,
                (SeriesKey::Proc { pid: Some(pid), .. }, By::Pid) => {
                    idle < EVICT_EXITED_NS || alive(*pid)
                }
                _ => idle < EVICT_IDLE_COMM_NS,
            }
        });
        let series = &self.series;
        self.owner.retain(|_, k| series.contains_key(k));
    }

    /// Everything a scrape shows, as of now.
    pub fn snapshot(&self, state: State) -> Snapshot {
        let mut series: Vec<(SeriesKey, ProcTotals)> =
            self.series.iter().map(|(k, t)| (*k, t.clone())).collect();
        // Stable output: by name, then PID; `_other` last.
        series.sort_by(|(a, _), (b, _)| {
            (*a == SeriesKey::Other, a.comm(), a.pid()).cmp(&(
                *b == SeriesKey::Other,
                b.comm(),
                b.pid(),
            ))
        });
        Snapshot {
            state,
            by: self.by,
            admitted: self.admitted(),
            limit: self.limit,
            folded: self.folded,
            series,
        }
    }
}

/// A probe's state, as `probe_state` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    Waiting,
    Skipped,
    Lost,
}

impl ProbeState {
    pub const ALL: [ProbeState; 4] = [
        ProbeState::Attached,
        ProbeState::Waiting,
        ProbeState::Skipped,
        ProbeState::Lost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProbeState::Attached => "attached",
            ProbeState::Waiting => "waiting",
            ProbeState::Skipped => "skipped",
            ProbeState::Lost => "lost",
        }
    }
}

/// What the tracer and the kernel say beyond the per-process totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub kernel_release: String,
    pub backend: &'static str,
    pub counts: Counts,
    pub probes: Vec<(&'static str, ProbeState)>,
    pub tls_module_loaded: bool,
    /// /proc/net/tls_stat (None: the kernel has no kernel TLS loaded).
    pub tls_stat: Option<BTreeMap<String, u64>>,
}

/// What one scrape serves: immutable, shared with the HTTP side.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub state: State,
    by: By,
    admitted: usize,
    limit: usize,
    folded: u64,
    series: Vec<(SeriesKey, ProcTotals)>,
}

/// The two text formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: what curl, promtool and older scrapers get.
    Prometheus,
    /// OpenMetrics 1.0 text, when the scraper's `Accept` header asks for it.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it (Prometheus 2.x and 3.x do, with
    /// the 0.0.4 text as the fallback), else the 0.0.4 text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The snapshot in `format`.
pub fn encode(snap: &Arc<Snapshot>, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(SnapshotCollector(snap.clone())));
    let mut out = String::with_capacity(16 << 10);
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

/// Labels given as (name, value) pairs.
struct Labels<'a>(Vec<(&'static str, Cow<'a, str>)>);

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (k, v) in &self.0 {
            let pair: (&str, &str) = (k, v);
            prometheus_client::encoding::EncodeLabel::encode(&pair, encoder.encode_label())?;
        }
        Ok(())
    }
}

/// The per-process labels of a series.
fn proc_labels(k: &SeriesKey, by: By) -> Vec<(&'static str, Cow<'_, str>)> {
    let mut l = vec![("comm", Cow::Borrowed(k.comm()))];
    if by == By::Pid {
        l.push((
            "pid",
            k.pid()
                .map_or(Cow::Borrowed(""), |p| Cow::Owned(p.to_string())),
        ));
    }
    l
}

#[derive(Debug)]
struct SnapshotCollector(Arc<Snapshot>);

/// Writes one metric: `each` is called with a writer for its samples.
fn metric(
    enc: &mut DescriptorEncoder,
    base: &str,
    each: impl FnOnce(&mut MetricEncoder) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let d = def(base);
    let unit = d.unit();
    let mut m = enc.encode_descriptor(d.base, d.help, unit.as_ref(), d.kind.metric_type())?;
    each(&mut m)
}

fn counter(m: &mut MetricEncoder, labels: Labels, v: u64) -> Result<(), std::fmt::Error> {
    m.encode_family(&labels)?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
}

fn gauge(m: &mut MetricEncoder, labels: Labels, v: i64) -> Result<(), std::fmt::Error> {
    m.encode_family(&labels)?.encode_gauge(&v)
}

/// `TlsCurrTxSw` and the like: (direction, mode) of a /proc/net/tls_stat session counter
/// with this prefix.
const TLS_SESSIONS: [(&str, &str, &str); 4] = [
    ("TxSw", "tx", "sw"),
    ("RxSw", "rx", "sw"),
    ("TxDevice", "tx", "device"),
    ("RxDevice", "rx", "device"),
];

/// /proc/net/tls_stat counters that count errors, and their `kind` label.
const TLS_ERRORS: [(&str, &str); 6] = [
    ("TlsDecryptError", "decrypt_error"),
    ("TlsDecryptRetry", "decrypt_retry"),
    ("TlsRxDeviceResync", "rx_device_resync"),
    ("TlsRxNoPadViolation", "rx_no_pad_violation"),
    ("TlsRxRekeyError", "rx_rekey_error"),
    ("TlsTxRekeyError", "tx_rekey_error"),
];

/// The drop causes and the counts they read.
fn drop_causes(c: &Counts) -> [(&'static str, u64); 5] {
    [
        ("ring_full", c.ring_full),
        ("in_flight_full", c.in_flight_full),
        ("aggregates_full", c.aggregates_full),
        ("returns_missed", c.returns_missed),
        ("skipped_by_kernel", c.skipped_by_kernel),
    ]
}

/// Reads one counter or one histogram of a process's totals.
type CounterOf = fn(&ProcTotals) -> u64;
type HistOf = fn(&ProcTotals) -> &Log2Hist;

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &*self.0;
        let st = &s.state;
        let by = s.by;
        metric(&mut enc, "build_info", |m| {
            gauge(
                m,
                Labels(vec![
                    ("version", Cow::Borrowed(env!("CARGO_PKG_VERSION"))),
                    ("kernel_release", Cow::Borrowed(st.kernel_release.as_str())),
                    ("backend", Cow::Borrowed(st.backend)),
                ]),
                1,
            )
        })?;
        metric(&mut enc, "payload", |m| {
            for (k, t) in &s.series {
                for path in Path::ALL {
                    let mut l = proc_labels(k, by);
                    l.push(("path", Cow::Borrowed(path.metric_label())));
                    counter(m, Labels(l), t.payload.get(path))?;
                }
            }
            Ok(())
        })?;
        let per_proc: [(&str, CounterOf); 3] = [
            ("ktls_ciphertext", |t| t.ciphertext),
            ("ktls_records", |t| t.records),
            ("sendfile_calls", |t| t.sendfile_calls),
        ];
        for (base, value) in per_proc {
            metric(&mut enc, base, |m| {
                for (k, t) in &s.series {
                    counter(m, Labels(proc_labels(k, by)), value(t))?;
                }
                Ok(())
            })?;
        }
        let hists: [(&str, HistOf); 2] = [
            ("sendfile_duration", |t| &t.sendfile_latency),
            ("ktls_send_duration", |t| &t.ktls_latency),
        ];
        for (base, hist) in hists {
            metric(&mut enc, base, |m| {
                for (k, t) in &s.series {
                    let h = hist(t);
                    m.encode_family(&Labels(proc_labels(k, by)))?
                        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        h.sum_seconds(),
                        h.count(),
                        &h.buckets(),
                        None,
                    )?;
                }
                Ok(())
            })?;
        }
        metric(&mut enc, "calls", |m| {
            counter(m, Labels(vec![]), st.counts.events)
        })?;
        metric(&mut enc, "events_dropped", |m| {
            for (cause, n) in drop_causes(&st.counts) {
                counter(m, Labels(vec![("cause", Cow::Borrowed(cause))]), n)?;
            }
            Ok(())
        })?;
        metric(&mut enc, "probe_state", |m| {
            for (probe, now) in &st.probes {
                for state in ProbeState::ALL {
                    let l = Labels(vec![
                        ("probe", Cow::Borrowed(*probe)),
                        ("state", Cow::Borrowed(state.name())),
                    ]);
                    gauge(m, l, i64::from(*now == state))?;
                }
            }
            Ok(())
        })?;
        metric(&mut enc, "tls_module_loaded", |m| {
            gauge(m, Labels(vec![]), i64::from(st.tls_module_loaded))
        })?;
        if let Some(tls) = &st.tls_stat {
            let get = |name: String| tls.get(&name).copied();
            let sessions = |prefix: &str, m: &mut MetricEncoder, counter_kind: bool| {
                for (suffix, dir, mode) in TLS_SESSIONS {
                    let Some(v) = get(format!("{prefix}{suffix}")) else {
                        continue;
                    };
                    let l = Labels(vec![
                        ("direction", Cow::Borrowed(dir)),
                        ("mode", Cow::Borrowed(mode)),
                    ]);
                    if counter_kind {
                        counter(m, l, v)?;
                    } else {
                        gauge(m, l, i64::try_from(v).unwrap_or(i64::MAX))?;
                    }
                }
                Ok(())
            };
            metric(&mut enc, "kernel_tls_sessions", |m| {
                sessions("TlsCurr", m, false)
            })?;
            metric(&mut enc, "kernel_tls_sessions_opened", |m| {
                sessions("Tls", m, true)
            })?;
            metric(&mut enc, "kernel_tls_errors", |m| {
                for (name, kind) in TLS_ERRORS {
                    if let Some(v) = tls.get(name) {
                        counter(m, Labels(vec![("kind", Cow::Borrowed(kind))]), *v)?;
                    }
                }
                Ok(())
            })?;
        }
        metric(&mut enc, "series", |m| {
            gauge(
                m,
                Labels(vec![]),
                i64::try_from(s.admitted).unwrap_or(i64::MAX),
            )
        })?;
        metric(&mut enc, "series_limit", |m| {
            gauge(
                m,
                Labels(vec![]),
                i64::try_from(s.limit).unwrap_or(i64::MAX),
            )
        })?;
        metric(&mut enc, "series_folded", |m| {
            counter(m, Labels(vec![]), s.folded)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aggregate::Aggregate, classify::tests::ev, event::TraceEvent};
    use ktls_trace_common::{Probe, lat_bucket, msg};

    const S: u64 = 1_000_000_000;

    fn agg(e: TraceEvent, calls: u64) -> Aggregate {
        let facts = e.facts();
        Aggregate {
            event: e,
            facts,
            calls,
        }
    }

    fn plain(pid: u32, bytes: i64) -> TraceEvent {
        ev(Probe::TcpSendmsg, pid, bytes, Some(7))
    }

    fn ktls_sendfile(pid: u32, bytes: i64, records: u32) -> TraceEvent {
        let mut e = ev(Probe::TlsSwSendmsg, pid, bytes, Some(9));
        e.flags = Some(msg::MSG_SPLICE_PAGES);
        e.records = Some(records);
        e
    }

    fn batch(calls: Vec<Aggregate>) -> Batch {
        Batch {
            calls,
            latency: vec![],
        }
    }

    fn key(pid: u32, by: By) -> SeriesKey {
        SeriesKey::Proc {
            comm: Comm::new(&format!("proc{pid}")),
            pid: (by == By::Pid).then_some(pid),
        }
    }

    fn totals_of(snap: &Snapshot, k: SeriesKey) -> Option<&ProcTotals> {
        snap.series.iter().find(|(s, _)| *s == k).map(|(_, t)| t)
    }

    #[test]
    fn totals_add_up_per_process_and_path_across_reads() {
        let mut t = Totals::new(Rules::default(), By::Comm, 10);
        t.ingest(
            &batch(vec![
                agg(plain(1, 100), 2),
                agg(ktls_sendfile(2, 65_536, 4), 4),
            ]),
            S,
        );
        t.ingest(&batch(vec![agg(plain(1, 50), 1)]), 2 * S);
        let snap = t.snapshot(State::default());
        let p1 = totals_of(&snap, key(1, By::Comm)).expect("proc1");
        assert_eq!(
            p1.payload.get(Path::Plain),
            150,
            "counters accumulate, not windows"
        );
        let p2 = totals_of(&snap, key(2, By::Comm)).expect("proc2");
        assert_eq!(p2.payload.get(Path::KtlsSendfile), 65_536);
        assert_eq!(p2.records, 4);
        assert_eq!(p2.payload.get(Path::Plain), 0);
        assert_eq!((snap.admitted, snap.folded), (2, 0));
    }

    #[test]
    fn processes_beyond_the_cap_are_folded_into_other_and_counted() {
        let mut t = Totals::new(Rules::default(), By::Pid, 2);
        t.ingest(
            &batch(vec![
                agg(plain(1, 10), 1),
                agg(plain(2, 20), 1),
                agg(plain(3, 30), 3),
            ]),
            S,
        );
        t.ingest(
            &batch(vec![agg(plain(1, 5), 1), agg(plain(4, 40), 2)]),
            2 * S,
        );
        let snap = t.snapshot(State::default());
        assert_eq!(snap.admitted, 2, "the cap holds");
        assert_eq!(snap.folded, 5, "the calls of pids 3 and 4");
        let other = totals_of(&snap, SeriesKey::Other).expect("_other");
        assert_eq!(other.payload.get(Path::Plain), 70);
        assert_eq!(
            totals_of(&snap, key(1, By::Pid)).map(|p| p.payload.get(Path::Plain)),
            Some(15),
            "an admitted process keeps its series"
        );
        assert_eq!(snap.series.last().map(|(k, _)| *k), Some(SeriesKey::Other));
        let text = encode(&Arc::new(snap), Format::Prometheus).unwrap();
        assert!(text.contains(
            "ktls_trace_payload_bytes_total{comm=\"_other\",pid=\"\",path=\"plain\"} 70\n"
        ));
        assert!(text.contains("ktls_trace_series_folded_total 5\n"));
        assert!(text.contains("ktls_trace_series 2\n"));
        assert!(text.contains("ktls_trace_series_limit 2\n"));
    }

    #[test]
    fn exited_and_idle_series_are_evicted_and_other_never() {
        let mut t = Totals::new(Rules::default(), By::Pid, 1);
        t.ingest(&batch(vec![agg(plain(1, 10), 1), agg(plain(2, 20), 1)]), S);
        // pid 1 exited, pid 2 (folded) too: only pid 1's own series may go, and only once
        // it has been idle long enough for scrapes to see its last numbers.
        t.evict(S + EVICT_EXITED_NS - 1, |_| false);
        assert_eq!(t.snapshot(State::default()).admitted, 1);
        t.evict(S + EVICT_EXITED_NS, |p| p != 1);
        let snap = t.snapshot(State::default());
        assert_eq!(snap.admitted, 0);
        assert!(totals_of(&snap, SeriesKey::Other).is_some());
        // A running process keeps its series however idle.
        let mut t = Totals::new(Rules::default(), By::Pid, 5);
        t.ingest(&batch(vec![agg(plain(1, 10), 1)]), S);
        t.evict(100 * EVICT_EXITED_NS, |_| true);
        assert_eq!(t.snapshot(State::default()).admitted, 1);
        // By name: an hour without a byte.
        let mut t = Totals::new(Rules::default(), By::Comm, 5);
        t.ingest(&batch(vec![agg(plain(1, 10), 1)]), S);
        t.evict(S + EVICT_IDLE_COMM_NS - 1, |_| false);
        assert_eq!(t.snapshot(State::default()).admitted, 1);
        t.evict(S + EVICT_IDLE_COMM_NS, |_| true);
        assert_eq!(t.snapshot(State::default()).admitted, 0);
    }

    #[test]
    fn latencies_go_to_their_process_and_role_with_exact_bounds() {
        let mut t = Totals::new(Rules::default(), By::Comm, 5);
        let mut sendfile = [0u64; LAT_BUCKETS];
        sendfile[lat_bucket(500)] = 2; // under 1.024 µs: the first bucket
        sendfile[lat_bucket(1_500_000)] = 3; // [2^20, 2^21) ns
        sendfile[lat_bucket(40 * S)] = 1; // over 2^34 ns: only +Inf
        let mut tls = [0u64; LAT_BUCKETS];
        tls[lat_bucket(3_000)] = 7;
        let mut b = batch(vec![agg(plain(1, 10), 1)]);
        b.latency = vec![
            crate::aggregate::Latency {
                pid: 1,
                probe: Probe::DoSendfile,
                hist: sendfile,
            },
            crate::aggregate::Latency {
                pid: 1,
                probe: Probe::TlsSwSendmsg,
                hist: tls,
            },
        ];
        t.ingest(&b, S);
        let snap = t.snapshot(State::default());
        let p = totals_of(&snap, key(1, By::Comm)).expect("proc1");
        let buckets = p.sendfile_latency.buckets();
        assert_eq!(buckets.len(), LE_LOG2_NS.count() + 1);
        assert_eq!(buckets[0], (1.024e-6, 2));
        let at = |s: f64| buckets.iter().find(|(le, _)| *le == s).map(|(_, n)| *n);
        assert_eq!(at((1u64 << 21) as f64 / 1e9), Some(3));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 6);
        assert_eq!(p.ktls_latency.count(), 7);
        // The sum is estimated from bucket middles: within -25%/+50% of the truth.
        let truth = (2.0 * 500.0 + 3.0 * 1.5e6 + 40e9) / 1e9;
        let est = p.sendfile_latency.sum_seconds();
        assert!(est > truth * 0.75 && est < truth * 1.5, "{est} vs {truth}");
        let text = encode(&Arc::new(snap), Format::Prometheus).unwrap();
        assert!(
            text.contains("ktls_trace_sendfile_duration_seconds_count{comm=\"proc1\"} 6\n"),
            "{text}"
        );
        assert!(text.contains(
            "ktls_trace_sendfile_duration_seconds_bucket{comm=\"proc1\",le=\"+Inf\"} 6\n"
        ));
        assert!(text.contains(
            "ktls_trace_ktls_send_duration_seconds_bucket{comm=\"proc1\",le=\"+Inf\"} 7\n"
        ));
    }

    /// A snapshot with something in every metric.
    fn full() -> Arc<Snapshot> {
        let mut t = Totals::new(Rules::default(), By::Comm, 5);
        let mut weird = plain(3, 5);
        weird.comm = Comm::new("a\"b\\c\nd");
        t.ingest(&batch(vec![agg(plain(1, 10), 1), agg(weird, 1)]), S);
        let tls_stat = [
            ("TlsCurrTxSw", 2),
            ("TlsCurrRxSw", 1),
            ("TlsTxSw", 40),
            ("TlsRxSw", 20),
            ("TlsDecryptError", 3),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        Arc::new(t.snapshot(State {
            kernel_release: "6.12.0-1-amd64".into(),
            backend: "kprobe",
            counts: Counts {
                events: 9,
                ring_full: 1,
                skipped_by_kernel: 2,
                ..Counts::default()
            },
            probes: vec![
                ("tls_sw_sendmsg", ProbeState::Waiting),
                ("do_sendfile", ProbeState::Attached),
            ],
            tls_module_loaded: true,
            tls_stat: Some(tls_stat),
        }))
    }

    #[test]
    fn every_listed_metric_is_served_with_its_type_and_nothing_else() {
        let text = encode(&full(), Format::Prometheus).unwrap();
        let typed: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect();
        let listed: Vec<(String, String)> = METRICS
            .iter()
            .map(|d| (d.name(), d.kind.name().to_string()))
            .collect();
        assert_eq!(typed, listed);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("ktls_trace_"), "{line}");
        }
        for want in [
            "ktls_trace_build_info{version=\"",
            "kernel_release=\"6.12.0-1-amd64\",backend=\"kprobe\"} 1\n",
            "ktls_trace_payload_bytes_total{comm=\"proc1\",path=\"plain\"} 10\n",
            "ktls_trace_payload_bytes_total{comm=\"proc1\",path=\"ktls_sendfile\"} 0\n",
            // Label values are escaped: a process may call itself anything (control
            // characters are already `?` in a Comm).
            "{comm=\"a\\\"b\\\\c?d\",path=\"plain\"} 5\n",
            "ktls_trace_events_dropped_total{cause=\"ring_full\"} 1\n",
            "ktls_trace_events_dropped_total{cause=\"skipped_by_kernel\"} 2\n",
            "ktls_trace_events_dropped_total{cause=\"aggregates_full\"} 0\n",
            "ktls_trace_calls_total 9\n",
            "ktls_trace_probe_state{probe=\"tls_sw_sendmsg\",state=\"waiting\"} 1\n",
            "ktls_trace_probe_state{probe=\"tls_sw_sendmsg\",state=\"attached\"} 0\n",
            "ktls_trace_probe_state{probe=\"do_sendfile\",state=\"attached\"} 1\n",
            "ktls_trace_tls_module_loaded 1\n",
            "ktls_trace_kernel_tls_sessions{direction=\"tx\",mode=\"sw\"} 2\n",
            "ktls_trace_kernel_tls_sessions_opened_total{direction=\"rx\",mode=\"sw\"} 20\n",
            "ktls_trace_kernel_tls_errors_total{kind=\"decrypt_error\"} 3\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn openmetrics_is_served_when_asked_and_ends_with_eof() {
        // What Prometheus 2.x sends: OpenMetrics first, the 0.0.4 text as a fallback.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        let text = encode(&full(), Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE ktls_trace_payload_bytes counter\n"));
        assert!(text.contains("# UNIT ktls_trace_payload_bytes bytes\n"));
        assert!(
            text.contains("ktls_trace_payload_bytes_total{comm=\"proc1\",path=\"plain\"} 10\n")
        );
    }

    #[test]
    fn without_kernel_tls_its_counters_are_absent_not_zero() {
        let mut s = (*full()).clone();
        s.state.tls_stat = None;
        s.state.tls_module_loaded = false;
        let text = encode(&Arc::new(s), Format::Prometheus).unwrap();
        assert!(!text.contains("ktls_trace_kernel_tls_sessions"));
        assert!(text.contains("ktls_trace_tls_module_loaded 0\n"));
    }

    #[test]
    fn docs_export_md_lists_every_metric_with_its_type_and_labels() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/export.md"))
                .expect("docs/export.md");
        let rows: Vec<&str> = doc
            .lines()
            .filter(|l| l.starts_with("| `ktls_trace_"))
            .collect();
        for d in METRICS {
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("| `{}` |", d.name())))
                .unwrap_or_else(|| panic!("docs/export.md has no row for {}", d.name()));
            assert!(row.contains(&format!("| {} |", d.kind.name())), "{row}");
            for l in d.labels {
                assert!(row.contains(&format!("`{l}`")), "{row}: label {l}");
            }
        }
        assert_eq!(
            rows.len(),
            METRICS.len(),
            "docs/export.md lists metrics the code does not serve"
        );
    }
}
