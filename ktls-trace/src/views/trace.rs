//! `ktls-trace trace`: the event stream, one line (or JSON object) per completed call, and
//! a summary when it stops.

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use super::summary::{ProbeCost, RunCost, Summary};
use crate::{
    attach::{TraceOptions, WAKEUP_BYTES},
    cli::{FilterArgs, TraceArgs},
    event::{TraceEvent, human_line},
    jsonl::JsonLines,
    kernel::KernelFacts,
    procs::{self, UsageError},
    session::{Session, SessionOptions, Stop, Update, announce},
};

/// Turns the filter flags into tracer options, checking the PIDs exist.
pub fn options(filter: &FilterArgs, verbose: u8) -> anyhow::Result<TraceOptions> {
    let pids = procs::resolve_pids(&filter.pids)?;
    Ok(TraceOptions {
        backend: filter.backend,
        pids,
        comm: filter.comm.clone(),
        debug: verbose >= 2,
        ring_bytes: None,
        wakeup_bytes: WAKEUP_BYTES,
        aggregate: false,
        aggregate_keys: None,
        // The ciphertext is observed at the TCP pushes: trace shows every one.
        derive_ciphertext: false,
    })
}

/// Starts a session and prints the start-up lines every tracing command shares (stderr).
pub fn start(opts: &TraceOptions, options: SessionOptions) -> anyhow::Result<Session> {
    let session = Session::start(KernelFacts::probe(), opts, options)?;
    for line in announce(session.tracer()) {
        eprintln!("ktls-trace: {line}");
    }
    Ok(session)
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Duration,
    Session(Stop),
    OutputClosed,
}

pub async fn run(args: TraceArgs, verbose: u8) -> anyhow::Result<()> {
    let mut opts = options(&args.filter, verbose)?;
    let ring_bytes = args.ring.bytes()?;
    // Bounded so the deadline (now + duration) cannot overflow the clock: 1e9 s is 31
    // years, longer than any trace is meant to run.
    if let Some(d) = args.duration
        && !(d.is_finite() && (0.0..1e9).contains(&d))
    {
        return Err(UsageError::Other(format!(
            "--duration must be a number of seconds from 0 to 1e9 (got {d})"
        ))
        .into());
    }
    opts.ring_bytes = Some(ring_bytes);
    let mut session = start(
        &opts,
        SessionOptions {
            stop_when_pids_exit: true,
        },
    )?;
    // After the session: its checks (privileges, kernel) come first, and what it attached
    // is detached again if the kernel will not count.
    let _run_stats = if args.cost {
        Some(crate::attach::progstats::count_run_time()?)
    } else {
        None
    };
    eprintln!("ktls-trace: tracing (Ctrl-C to stop)");

    let started = Instant::now();
    let deadline = args
        .duration
        .map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d));
    let mut classifier = crate::classify::Classifier::new(session.rules());
    let mut summary = Summary::default();
    let mut printer = Printer::new(args.json);

    let end = loop {
        tokio::select! {
            u = session.next() => match u? {
                Update::Events(events) => {
                    if !printer.emit(&events, &mut summary, &mut classifier) {
                        break End::OutputClosed;
                    }
                }
                Update::Notices(notices) => {
                    for n in notices {
                        eprintln!("ktls-trace: {n}");
                    }
                }
                Update::Tick => {}
                Update::Stop(s) => break End::Session(s),
            },
            _ = sleep_until(deadline) => break End::Duration,
        }
    };
    // Whatever the kernel wrote before we stopped still counts.
    let rest = session.drain_now();
    if end != End::OutputClosed {
        printer.emit(&rest, &mut summary, &mut classifier);
    }
    summary.counts = session.counts();
    let secs = started.elapsed().as_secs_f64();
    if end == End::Session(Stop::ProcessesGone) {
        eprintln!("ktls-trace: the traced processes have exited");
    }
    if args.json && summary.counts.drops() > 0 {
        // The text summary says it in its body; JSON readers get it on stderr too.
        let c = summary.counts;
        let l = session.tracer().losses();
        let mut why = String::new();
        if l.ring_full + l.in_flight_full > 0 {
            why.push_str("; raise --ring-mib");
        }
        let at = l.at_probes();
        if !at.is_empty() {
            why = format!("{why}; {at}");
        }
        eprintln!(
            "ktls-trace: {} events were dropped in the kernel: the totals are low{why}",
            c.drops()
        );
    }
    if args.cost {
        summary.cost = Some(probe_costs(session.tracer()));
    }
    let backend = session.tracer().plan().backend.name();
    drop(session);
    if end != End::OutputClosed {
        let text = if args.json {
            format!("{}\n", summary.to_json(backend, secs))
        } else {
            summary.render_text(backend, secs)
        };
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
    Ok(())
}

/// Per attached probe, its programs' runs and run time as the kernel counted them.
fn probe_costs(tracer: &crate::attach::Tracer) -> Vec<ProbeCost> {
    let backend = tracer.plan().backend;
    tracer
        .program_stats()
        .into_iter()
        .map(|(probe, entry, ret)| {
            let via = match tracer.via(probe) {
                Some(crate::attach::Via::Trampolines) => "fentry",
                _ => backend.name(),
            };
            let cost = |s: crate::attach::progstats::ProgStats| RunCost {
                runs: s.run_cnt,
                ns: s.run_time_ns,
            };
            ProbeCost {
                probe,
                via,
                entry: cost(entry),
                ret: ret.map(cost),
            }
        })
        .collect()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes events (lines, or `--json` objects) to an output, counting them into the
/// summary: what `trace` does with every batch the session delivers.
pub struct Printer {
    json: bool,
    t0: Option<u64>,
    open: bool,
    /// `--json`: the lines not written yet (reused: one large write per batch).
    lines: JsonLines,
}

impl Printer {
    /// `json`: the `--json` lines, else the human-readable ones.
    pub fn new(json: bool) -> Printer {
        Printer {
            json,
            t0: None,
            open: true,
            lines: JsonLines::new(),
        }
    }

    /// To stdout. Returns false when stdout is gone (e.g. `| head`); events still count.
    fn emit(
        &mut self,
        events: &[TraceEvent],
        summary: &mut Summary,
        classifier: &mut crate::classify::Classifier,
    ) -> bool {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        self.emit_to(events, summary, classifier, &mut out)
    }

    /// Counts `events` into `summary` and writes their lines to `out`. Returns false once
    /// `out` failed (nothing more is written then; events still count).
    pub fn emit_to(
        &mut self,
        events: &[TraceEvent],
        summary: &mut Summary,
        classifier: &mut crate::classify::Classifier,
        out: &mut impl Write,
    ) -> bool {
        if self.json {
            self.emit_json(events, summary, classifier, out)
        } else {
            self.emit_text(events, summary, classifier, out)
        }
    }

    /// The lines collect in one buffer that goes out whenever it is full and at the end
    /// of the batch: a few writes per batch, not one per line.
    fn emit_json(
        &mut self,
        events: &[TraceEvent],
        summary: &mut Summary,
        classifier: &mut crate::classify::Classifier,
        out: &mut impl Write,
    ) -> bool {
        for e in events {
            if self.open {
                self.lines.push(e);
                if self.lines.is_full() && self.lines.write_to(out).is_err() {
                    self.open = false;
                }
            }
            summary.add(e, &classifier.classify(e));
        }
        self.open = self.open && self.lines.write_to(out).and_then(|()| out.flush()).is_ok();
        self.open
    }

    fn emit_text(
        &mut self,
        events: &[TraceEvent],
        summary: &mut Summary,
        classifier: &mut crate::classify::Classifier,
        out: &mut impl Write,
    ) -> bool {
        let mut out = io::BufWriter::new(out);
        for e in events {
            summary.add(e, &classifier.classify(e));
            if !self.open {
                continue;
            }
            let start = *self.t0.get_or_insert(e.ts_ns);
            if writeln!(out, "{}", human_line(e, start)).is_err() {
                self.open = false;
            }
        }
        self.open = self.open && out.flush().is_ok();
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        classify::{
            Classifier,
            tests::{TLS13, ev, under},
        },
        event::JsonLine,
    };
    use ktls_trace_common::{Probe, msg};

    /// A kTLS sendfile's events on two threads, more than one 64 KiB write's worth.
    fn events() -> Vec<TraceEvent> {
        let mut out = Vec::new();
        for i in 0..2_000u64 {
            let pid = 400 + (i % 2) as u32;
            let mut tcp = under(
                ev(Probe::TcpSendmsgLocked, pid, 16_406, Some(0x55 + i % 4)),
                Probe::TlsSwSendmsg,
                Probe::DoSendfile,
            );
            tcp.ts_ns = 1_000_000_000 + i * 3_000;
            tcp.flags = Some(msg::MSG_SPLICE_PAGES);
            let mut tls = under(
                ev(Probe::TlsSwSendmsg, pid, 65_536, Some(0x55 + i % 4)),
                Probe::DoSendfile,
                Probe::DoSendfile,
            );
            tls.ts_ns = tcp.ts_ns + 1_000;
            tls.flags = Some(msg::MSG_SPLICE_PAGES | msg::MSG_MORE);
            tls.records = Some(4);
            tls.tls = Some(TLS13);
            let mut call = ev(Probe::DoSendfile, pid, 65_536, None);
            call.ts_ns = tls.ts_ns + 1_000;
            out.extend([tcp, tls, call]);
        }
        out
    }

    /// Fails every write after the first `ok` ones.
    struct Failing {
        ok: usize,
        got: Vec<u8>,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            self.ok -= 1;
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_and_summary_of_a_batch() {
        let events = events();
        let mut want = Vec::new();
        let mut want_summary = Summary::default();
        let mut k = Classifier::default();
        for e in &events {
            serde_json::to_writer(&mut want, &JsonLine(e)).unwrap();
            want.push(b'\n');
            want_summary.add(e, &k.classify(e));
        }
        // In two batches, as the session hands them over.
        let mut printer = Printer::new(true);
        let mut summary = Summary::default();
        let mut k = Classifier::default();
        let mut out = Vec::new();
        let (a, b) = events.split_at(1_001);
        assert!(printer.emit_to(a, &mut summary, &mut k, &mut out));
        assert!(printer.emit_to(b, &mut summary, &mut k, &mut out));
        assert_eq!(out, want);
        assert_eq!(summary, want_summary);
        assert_eq!(summary.totals(Probe::TlsSwSendmsg).events, 2_000);
        // The output gone after the first 64 KiB write: nothing more is written, every
        // event still counts.
        let mut printer = Printer::new(true);
        let mut summary = Summary::default();
        let mut k = Classifier::default();
        let mut out = Failing {
            ok: 1,
            got: Vec::new(),
        };
        assert!(!printer.emit_to(&events, &mut summary, &mut k, &mut out));
        assert!(!printer.emit_to(&events[..10], &mut summary, &mut k, &mut out));
        assert!(out.got.len() >= crate::jsonl::FLUSH_AT && want.starts_with(&out.got));
        let mut again = want_summary.clone();
        for e in &events[..10] {
            again.add(e, &Classifier::default().classify(e));
        }
        assert_eq!(summary.probes, again.probes);
    }
}
