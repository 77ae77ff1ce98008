//! `ktls-trace trace`: the event stream.

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    aggregate::Summary,
    cli::{FilterArgs, TraceArgs},
    event::{JsonEvent, TraceEvent, human_line},
    kernel::KernelFacts,
    procs,
    tracer::{TraceOptions, Tracer},
};

/// Turns the filter flags into tracer options, checking the PIDs exist.
pub fn options(filter: &FilterArgs, verbose: u8) -> anyhow::Result<TraceOptions> {
    let pids = procs::resolve_pids(&filter.pids)?;
    if filter.comm.as_deref() == Some("") {
        return Err(procs::UsageError::Other("--comm needs a command name".into()).into());
    }
    Ok(TraceOptions {
        backend: filter.backend,
        pids,
        comm: filter.comm.clone(),
        debug: verbose >= 2,
        ring_bytes: None,
        wakeup_bytes: crate::tracer::WAKEUP_BYTES,
    })
}

/// Prints the start-up lines every tracing command shares (stderr).
pub fn announce(tracer: &Tracer) {
    let plan = tracer.plan();
    eprintln!("ktls-trace: {}", plan.mode_sentence(tracer.facts()));
    let attached: Vec<&str> = tracer.attached().iter().map(|p| p.name()).collect();
    eprintln!("ktls-trace: attached {}", attached.join(", "));
    let waiting: Vec<&str> = tracer.waiting().map(|p| p.name()).collect();
    if !waiting.is_empty() {
        eprintln!(
            "ktls-trace: the tls module is not loaded; {} will be attached when it is (modprobe tls)",
            waiting.join(", ")
        );
    }
    for (p, why) in tracer.skipped() {
        log::info!("skipped {}: {why}", p.name());
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Duration,
    Signal,
    ProcessesGone,
    OutputClosed,
}

pub async fn run(args: TraceArgs, verbose: u8) -> anyhow::Result<()> {
    let mut opts = options(&args.filter, verbose)?;
    if !args.ring_mib.is_power_of_two() || args.ring_mib > 1024 {
        return Err(procs::UsageError::Other(
            "--ring-mib must be a power of two between 1 and 1024".into(),
        )
        .into());
    }
    opts.ring_bytes = Some(args.ring_mib << 20);
    // Handlers first: a signal that arrives once we said "tracing" must end the trace
    // with a summary, not kill the process.
    let stop = crate::signals::stop_signals().context("installing the SIGINT/SIGTERM handlers")?;
    tokio::pin!(stop);
    let facts = KernelFacts::probe();
    let mut tracer = Tracer::start(facts, &opts)?;
    announce(&tracer);
    eprintln!("ktls-trace: tracing (Ctrl-C to stop)");

    let started = Instant::now();
    let deadline = args
        .duration
        .map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The kernel wakes us only for large batches; small ones are collected on this timer.
    let mut drain = tokio::time::interval(crate::tracer::DRAIN_EVERY);
    let mut summary = Summary::default();
    let mut batch = Vec::new();
    let mut t0: Option<u64> = None;
    let mut printer = Printer::new(args.json);

    let stop = loop {
        tokio::select! {
            r = tracer.next_batch(&mut batch) => {
                r?;
                if !printer.emit(&mut batch, &mut summary, &mut t0) {
                    break Stop::OutputClosed;
                }
            }
            _ = drain.tick() => {
                tracer.drain(&mut batch);
                if !printer.emit(&mut batch, &mut summary, &mut t0) {
                    break Stop::OutputClosed;
                }
            }
            _ = tick.tick() => {
                for n in tracer.check_tls_module() {
                    eprintln!("ktls-trace: {n}");
                }
                if !opts.pids.is_empty() && opts.pids.iter().all(|p| !procs::alive(*p)) {
                    break Stop::ProcessesGone;
                }
            }
            () = &mut stop => break Stop::Signal,
            _ = sleep_until(deadline) => break Stop::Duration,
        }
    };
    // Whatever the kernel wrote before we stopped still counts.
    tracer.drain(&mut batch);
    if stop != Stop::OutputClosed {
        printer.emit(&mut batch, &mut summary, &mut t0);
    }
    summary.drops = tracer.drops();
    let secs = started.elapsed().as_secs_f64();
    if stop == Stop::ProcessesGone {
        eprintln!("ktls-trace: the traced processes have exited");
    }
    let backend = tracer.plan().backend.name();
    drop(tracer);
    if stop != Stop::OutputClosed {
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes events to stdout, counting them into the summary.
struct Printer {
    json: bool,
}

impl Printer {
    fn new(json: bool) -> Printer {
        Printer { json }
    }

    /// Returns false when stdout is gone (e.g. `| head`).
    fn emit(
        &mut self,
        batch: &mut Vec<Result<TraceEvent, crate::event::DecodeError>>,
        summary: &mut Summary,
        t0: &mut Option<u64>,
    ) -> bool {
        let stdout = io::stdout();
        let mut out = io::BufWriter::new(stdout.lock());
        let mut ok = true;
        for item in batch.drain(..) {
            let e = match item {
                Ok(e) => e,
                Err(err) => {
                    summary.undecodable += 1;
                    log::warn!("{err}");
                    continue;
                }
            };
            summary.add(&e);
            if !ok {
                continue;
            }
            let start = *t0.get_or_insert(e.ts_ns);
            let res = if self.json {
                serde_json::to_writer(&mut out, &JsonEvent::from(&e))
                    .map_err(io::Error::other)
                    .and_then(|()| out.write_all(b"\n"))
            } else {
                writeln!(out, "{}", human_line(&e, start))
            };
            if res.is_err() {
                ok = false;
            }
        }
        ok && out.flush().is_ok()
    }
}
