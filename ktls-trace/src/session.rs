//! One tracing session: the only reader of the ring buffer. It owns the drain timer (the
//! kernel wakes the reader only for large batches), the polling for the tls module, SIGINT
//! and SIGTERM, and the counts of events, undecodable records and kernel drops. Every
//! command that traces (`trace`, `top`, `top --once`, `verify`) is a consumer: it awaits
//! [`Session::next`] beside its own work and folds what comes out.
//!
//! Events that completed while the probes were still being attached one by one are
//! incomplete (a TCP push seen without its kTLS send, or the other way round) and are
//! dropped, counted in [`Counts::before_start`].

use std::{future::Future, pin::Pin, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, time::Interval};

use ktls_trace_common::Probe;

use crate::{
    aggregate::{Batch, Deltas, Latency, aggregate_of},
    attach::{AggregateError, Notice, TraceOptions, Tracer, TracerError, Via},
    classify::Rules,
    event::{Comm, TraceEvent, decode},
    inthash::IntMap,
    kernel::KernelFacts,
    plan::Backend,
    procs,
};

/// How often the ring buffer is drained without a wake-up from the kernel.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// The same in aggregate mode, where the programs send nothing through the ring buffer:
/// a drain is only a safety net there.
const AGGREGATE_DRAIN_EVERY: Duration = Duration::from_secs(10);
/// How often the tls module and the traced processes are checked.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);

/// Why a session cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Tracer(#[from] TracerError),
    #[error("installing the SIGINT/SIGTERM handlers failed: {0}")]
    Signals(std::io::Error),
    #[error("reading the ring buffer failed: {0}")]
    Ring(std::io::Error),
    #[error(transparent)]
    Aggregates(#[from] AggregateError),
}

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT or SIGTERM.
    Signal,
    /// Every process of `--pid` has exited (when asked to stop then).
    ProcessesGone,
}

/// What [`Session::next`] hands out.
#[derive(Debug)]
pub enum Update {
    /// Decoded events, oldest first.
    Events(Vec<TraceEvent>),
    /// Something the user should hear about (probes attached or lost later).
    Notices(Vec<Notice>),
    /// Housekeeping ran (a periodic tick consumers may use).
    Tick,
    Stop(Stop),
}

/// What the session counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Completed calls seen: events, or in aggregate mode the calls the kernel added up.
    pub events: u64,
    /// Of `events`: those that came as ring-buffer records (none in aggregate mode).
    pub ring_records: u64,
    /// Ring-buffer records that could not be decoded.
    pub undecodable: u64,
    /// Of [`Counts::drops`]: calls whose return probe never ran (see [`crate::attach::Losses`]).
    pub returns_missed: u64,
    /// Of [`Counts::drops`]: calls whose entry program the kernel did not run (another BPF program,
    /// or a bpf() call touching maps, held the CPU; see [`crate::attach::Losses`]).
    pub skipped_by_kernel: u64,
    /// Of [`Counts::drops`]: the ring buffer was full.
    pub ring_full: u64,
    /// Of [`Counts::drops`]: the table of calls in flight was full.
    pub in_flight_full: u64,
    /// Of [`Counts::drops`]: the in-kernel aggregate maps were full.
    pub aggregates_full: u64,
    /// Events that completed before every probe was attached (dropped).
    pub before_start: u64,
}

impl Counts {
    /// Events the kernel could not deliver, whatever the cause: the sum of the causes.
    pub fn drops(&self) -> u64 {
        self.ring_full
            + self.in_flight_full
            + self.aggregates_full
            + self.returns_missed
            + self.skipped_by_kernel
    }

    /// Why `drops` were lost, the non-zero causes only, for a one-line header:
    /// `ring buffer full 2, skipped by the kernel 1`. Empty without drops.
    pub fn drop_causes(&self) -> String {
        [
            ("ring buffer full", self.ring_full),
            ("in-flight table full", self.in_flight_full),
            ("totals map full", self.aggregates_full),
            ("returns missed", self.returns_missed),
            ("skipped by the kernel", self.skipped_by_kernel),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Options beyond what is traced.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// End with [`Stop::ProcessesGone`] once every traced PID has exited.
    pub stop_when_pids_exit: bool,
}

/// Names of processes by pid: an event carries its thread's name; the process's (its main
/// thread's) comes from the main thread's own events, else from what the programs noted
/// (they keep it for processes whose other threads send), else from /proc, once.
#[derive(Debug, Default)]
pub struct ProcessNames(IntMap<u32, Option<Comm>>);

impl ProcessNames {
    /// Bounds the cache: a long session sees many short-lived processes.
    const MAX: usize = 65_536;

    /// The name of `e`'s process; `noted` is what the programs noted for a pid.
    pub fn name(
        &mut self,
        e: &TraceEvent,
        noted: impl FnOnce(u32) -> Option<Comm>,
    ) -> Option<Comm> {
        if e.tid == e.pid {
            // The main thread: the kernel's own word, and the freshest (exec renames).
            self.0.insert(e.pid, Some(e.comm));
            return Some(e.comm);
        }
        if let Some(n) = self.0.get(&e.pid) {
            return *n;
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        let n = noted(e.pid).or_else(|| procs::process_name(e.pid).map(|n| Comm::new(&n)));
        self.0.insert(e.pid, n);
        n
    }
}

/// A running trace and its reader.
pub struct Session {
    tracer: Tracer,
    ring: AsyncFd<RingBuf<MapData>>,
    drain: Interval,
    house: Interval,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    options: SessionOptions,
    pids: Vec<u32>,
    names: ProcessNames,
    /// Aggregate mode: the kernel's totals at the last read.
    deltas: Option<Deltas>,
    /// Events in the last batch: the next one's vector is allocated that large at once.
    batch_len: usize,
    start_ns: u64,
    counts: Counts,
    stopped: bool,
    /// Builds with debug assertions only: when to panic on purpose (see [`test_panic_at`]).
    panic_at: Option<tokio::time::Instant>,
}

/// The probe-lifetime tests need a tracer that panics with its probes attached. Builds
/// with debug assertions (`dev`, and `ci`, the one the tests run) read
/// `KTLS_TRACE_TEST_PANIC=<seconds>` and panic at the first housekeeping tick after that
/// long; release builds never do.
fn test_panic_at() -> Option<tokio::time::Instant> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let secs: f64 = std::env::var("KTLS_TRACE_TEST_PANIC").ok()?.parse().ok()?;
    let secs = Duration::try_from_secs_f64(secs).ok()?;
    Some(tokio::time::Instant::now() + secs)
}

impl Session {
    /// Installs the signal handlers (first: a signal that arrives once the user was told
    /// "tracing" must end the session, not kill the process), then loads and attaches.
    pub fn start(
        facts: KernelFacts,
        opts: &TraceOptions,
        options: SessionOptions,
    ) -> Result<Session, SessionError> {
        let stop = crate::signals::stop_signals().map_err(SessionError::Signals)?;
        let mut tracer = Tracer::start(facts, opts)?;
        let ring = tracer
            .take_ring()
            .ok_or_else(|| TracerError::Load("the ring buffer was already taken".into()))?;
        // Aggregate mode: what the kernel added up while the probes were being attached
        // one by one is incomplete (as events are, see `Counts::before_start`): the first
        // read is the baseline.
        let deltas = match opts.aggregate {
            true => {
                let mut d = Deltas::default();
                tracer.aggregate_changes(&mut d)?;
                Some(d)
            }
            false => None,
        };
        // Nothing crosses the ring buffer in aggregate mode: no point waking to drain it.
        let drain_every = if deltas.is_some() {
            AGGREGATE_DRAIN_EVERY
        } else {
            DRAIN_EVERY
        };
        let mut drain = tokio::time::interval(drain_every);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut house = tokio::time::interval(HOUSEKEEPING_EVERY);
        house.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Session {
            tracer,
            ring,
            drain,
            house,
            stop: Box::pin(stop),
            options,
            pids: opts.pids.clone(),
            names: ProcessNames::default(),
            deltas,
            start_ns: crate::clock::now_ns(),
            counts: Counts::default(),
            batch_len: 0,
            stopped: false,
            panic_at: test_panic_at(),
        })
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// How events of this session count: in tracepoint mode without
    /// `sock:sock_send_length` (before 6.3), sendfile's bytes are the only payload figure.
    pub fn rules(&self) -> Rules {
        let plan = self.tracer.plan();
        Rules {
            sendfile_is_payload: plan.backend == Backend::Tracepoint
                && !self.tracer.attached().contains(&Probe::SockSendLength),
            ciphertext_derived: plan.ciphertext_derived,
        }
    }

    /// The counts so far (drops read from the kernel now).
    pub fn counts(&self) -> Counts {
        let l = self.tracer.losses();
        Counts {
            returns_missed: l.returns_missed(),
            skipped_by_kernel: l.entries_skipped(),
            ring_full: l.ring_full,
            in_flight_full: l.in_flight_full,
            aggregates_full: l.aggregates_full,
            ..self.counts
        }
    }

    /// Waits for the next thing worth handing out. Cancel-safe: everything read from the
    /// ring buffer is returned from the same poll that read it.
    pub async fn next(&mut self) -> Result<Update, SessionError> {
        if self.stopped {
            return Ok(Update::Stop(Stop::Signal));
        }
        loop {
            tokio::select! {
                r = self.ring.readable_mut() => {
                    let mut guard = r.map_err(SessionError::Ring)?;
                    let events = read_ring(guard.get_inner_mut(), self.start_ns, &mut self.counts, &mut self.names, &mut self.batch_len, &self.tracer);
                    guard.clear_ready();
                    if !events.is_empty() {
                        return Ok(Update::Events(events));
                    }
                }
                _ = self.drain.tick() => {
                    let events = self.drain_now();
                    if !events.is_empty() {
                        return Ok(Update::Events(events));
                    }
                }
                _ = self.house.tick() => {
                    if self.panic_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                        panic!("KTLS_TRACE_TEST_PANIC: panicking with the probes attached");
                    }
                    let notices = self.tracer.poll_tls_module();
                    if !notices.is_empty() {
                        return Ok(Update::Notices(notices));
                    }
                    if self.options.stop_when_pids_exit
                        && !self.pids.is_empty()
                        && self.pids.iter().all(|p| !procs::alive(*p))
                    {
                        self.stopped = true;
                        return Ok(Update::Stop(Stop::ProcessesGone));
                    }
                    return Ok(Update::Tick);
                }
                () = &mut self.stop => {
                    self.stopped = true;
                    return Ok(Update::Stop(Stop::Signal));
                }
            }
        }
    }

    /// Aggregate mode: does the kernel add calls up (read with [`Session::read_aggregates`])
    /// rather than send events?
    pub fn aggregated(&self) -> bool {
        self.deltas.is_some()
    }

    /// Aggregate mode: the calls that completed since the last read (since the start, at
    /// the first), named and ready to classify. The kernel's maps are cleared of keys
    /// idle for long ([`Deltas`]). Without aggregate mode: an empty batch.
    pub fn read_aggregates(&mut self) -> Result<Batch, SessionError> {
        let Some(deltas) = &mut self.deltas else {
            return Ok(Batch::default());
        };
        let crate::aggregate::Changes { calls, latency, .. } =
            self.tracer.aggregate_changes(deltas)?;
        let now = crate::clock::now_ns();
        let mut batch = Batch::default();
        for (k, d) in &calls {
            match aggregate_of(k, d, now) {
                Some(mut a) => {
                    let tracer = &self.tracer;
                    a.event.process = self.names.name(&a.event, |pid| tracer.process_name(pid));
                    self.counts.events += a.calls;
                    batch.calls.push(a);
                }
                None => self.counts.undecodable += d.calls,
            }
        }
        for (k, hist) in latency {
            if let Some(probe) = Probe::from_u8(k.probe) {
                batch.latency.push(Latency {
                    pid: k.pid,
                    probe,
                    hist,
                });
            }
        }
        Ok(batch)
    }

    /// Decodes what is in the ring buffer now, without waiting (the end of a run).
    pub fn drain_now(&mut self) -> Vec<TraceEvent> {
        read_ring(
            self.ring.get_mut(),
            self.start_ns,
            &mut self.counts,
            &mut self.names,
            &mut self.batch_len,
            &self.tracer,
        )
    }
}

fn read_ring(
    ring: &mut RingBuf<MapData>,
    start_ns: u64,
    counts: &mut Counts,
    names: &mut ProcessNames,
    batch_len: &mut usize,
    tracer: &Tracer,
) -> Vec<TraceEvent> {
    let mut out = Vec::with_capacity(*batch_len);
    while let Some(item) = ring.next() {
        read_record(
            &item,
            start_ns,
            counts,
            names,
            |pid| tracer.process_name(pid),
            &mut out,
        );
    }
    *batch_len = out.len();
    out
}

/// What the session does with each ring-buffer record (public for the benchmark of the
/// per-event path): decodes it, leaves out calls that completed before the probes were
/// attached, names its process (`noted`: what the programs noted for a pid), counts it and
/// appends it to `out`.
pub fn read_record(
    item: &[u8],
    start_ns: u64,
    counts: &mut Counts,
    names: &mut ProcessNames,
    noted: impl FnOnce(u32) -> Option<Comm>,
    out: &mut Vec<TraceEvent>,
) {
    match decode(item) {
        Ok(mut e) => {
            if e.ts_ns < start_ns {
                counts.before_start += 1;
                return;
            }
            counts.events += 1;
            counts.ring_records += 1;
            e.process = names.name(&e, noted);
            out.push(e);
        }
        Err(err) => {
            counts.undecodable += 1;
            log::warn!("{err}");
        }
    }
}

/// The lines every tracing command prints when it starts (stderr): the mode, what is
/// attached, what waits for the tls module, and every probe the kernel refused with what
/// that costs. Skipped probes (absent on this kernel by design) only under `-v`.
pub fn announce(tracer: &Tracer) -> Vec<String> {
    let plan = tracer.plan();
    let mut lines = vec![plan.mode_sentence(tracer.facts())];
    let attached: Vec<&str> = tracer.attached().iter().map(|p| p.name()).collect();
    lines.push(format!("attached {}", attached.join(", ")));
    let trampolines: Vec<&str> = tracer
        .attached()
        .iter()
        .filter(|p| tracer.via(**p) == Some(Via::Trampolines))
        .map(|p| p.name())
        .collect();
    if !trampolines.is_empty() {
        lines.push(format!(
            "BPF trampolines (fentry/fexit) on {}; kprobes on the rest",
            trampolines.join(", ")
        ));
    }
    let waiting: Vec<&str> = tracer.waiting().iter().map(|p| p.name()).collect();
    if !waiting.is_empty() {
        lines.push(format!(
            "the tls module is not loaded; {} will be attached when it is (modprobe tls)",
            waiting.join(", ")
        ));
    }
    for l in tracer.lost() {
        lines.push(l.to_string());
    }
    for (p, why) in tracer.skipped() {
        log::info!("skipped {}: {why}", p.name());
    }
    for n in tracer.numbers() {
        if let crate::plan::Source::Missing(why) = &n.source {
            log::info!("{}: not available ({why})", n.number);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::tests::ev;

    #[test]
    fn drop_causes_name_the_nonzero_ones_in_order() {
        assert_eq!(Counts::default().drop_causes(), "");
        let c = Counts {
            skipped_by_kernel: 1,
            ring_full: 2,
            aggregates_full: 1,
            ..Counts::default()
        };
        assert_eq!(
            c.drop_causes(),
            "ring buffer full 2, totals map full 1, skipped by the kernel 1"
        );
        assert_eq!(c.drops(), 4);
    }

    #[test]
    fn process_names_come_from_the_main_thread() {
        let mut n = ProcessNames::default();
        let mut main = ev(Probe::TcpSendmsg, 4_194_300, 1, None);
        main.comm = Comm::new("envoy");
        let mut worker = main.clone();
        worker.tid += 1;
        worker.comm = Comm::new("wrk:worker_3");
        let none = |_| None;
        assert_eq!(n.name(&main, none), Some(Comm::new("envoy")));
        assert_eq!(n.name(&worker, none), Some(Comm::new("envoy")));
        // A thread of a process not seen before and gone from /proc: what the programs
        // noted, else unknown.
        let mut stranger = worker.clone();
        stranger.pid = 4_194_299;
        assert_eq!(n.name(&stranger, none), None);
        stranger.pid = 4_194_298;
        assert_eq!(
            n.name(&stranger, |_| Some(Comm::new("java"))),
            Some(Comm::new("java"))
        );
        // Our own process, from /proc.
        let mut me = worker;
        me.pid = std::process::id();
        assert!(n.name(&me, none).is_some());
    }
}
