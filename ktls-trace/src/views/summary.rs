//! What `trace` counted, printed when it stops: calls and bytes per probe (raw), what the
//! bytes were per path (classified), and what the session lost. Pure: fed by events and
//! their classification.

use ktls_trace_common::Probe;
use serde::Serialize;

use crate::{
    classify::{Contribution, Path, PathBytes},
    event::TraceEvent,
    session::Counts,
};

/// Totals of one probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProbeTotals {
    /// Completed calls seen.
    pub events: u64,
    /// Sum of the size each call asked for.
    pub bytes: u64,
    /// Sum of positive return values: bytes the calls really moved.
    pub bytes_done: u64,
    /// Calls that returned an error (EAGAIN not counted: see `would_block`).
    pub errors: u64,
    /// Calls that returned EAGAIN: a non-blocking socket was full, the caller retries.
    pub would_block: u64,
}

/// What the bytes were, over the whole trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Classified {
    /// Payload bytes per path.
    pub paths: PathBytes,
    /// TLS control plaintext (alerts) written into kernel TLS.
    pub tls_control: u64,
    /// Ciphertext kernel TLS pushed into TCP.
    pub ciphertext: u64,
    /// TLS records closed, where the kernel told (None: it did not for any kTLS send).
    pub records: Option<u64>,
    /// kTLS sends whose record count is unknown.
    pub sends_without_records: u64,
    /// Bytes sendfile(2) moved.
    pub sendfile_bytes: u64,
}

/// Runs of one BPF program and the time the kernel spent in them (run-time statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCost {
    pub runs: u64,
    pub ns: u64,
}

impl RunCost {
    /// Nanoseconds per run (None: it did not run).
    pub fn ns_per_run(self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "runs": self.runs,
            "ns": self.ns,
            "ns_per_run": self.ns_per_run().map(|n| (n * 10.0).round() / 10.0),
        })
    }

    fn text(self) -> String {
        match self.ns_per_run() {
            Some(n) => format!("{} runs, {n:.0} ns/run", self.runs),
            None => "no runs".to_string(),
        }
    }
}

/// What one probe's programs cost in the kernel while `trace --cost` ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCost {
    pub probe: Probe,
    /// How it was attached: kprobe, fentry or tracepoint.
    pub via: &'static str,
    pub entry: RunCost,
    /// None: the probe has one program (a tracepoint other than a syscall's enter/exit).
    pub ret: Option<RunCost>,
}

/// Totals per probe, indexed by the probe's discriminant (one array index per event, not
/// a map lookup); a probe without events has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerProbe([ProbeTotals; Probe::ALL.len()]);

impl PerProbe {
    /// The probes that had events, in [`Probe::ALL`] order, with their totals.
    pub fn iter(&self) -> impl Iterator<Item = (Probe, &ProbeTotals)> {
        Probe::ALL
            .into_iter()
            .zip(&self.0)
            .filter(|(_, t)| t.events > 0)
    }

    pub fn get(&self, p: Probe) -> ProbeTotals {
        self.0[p as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    fn entry(&mut self, p: Probe) -> &mut ProbeTotals {
        &mut self.0[p as usize]
    }
}

/// Everything `trace` counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub probes: PerProbe,
    pub classified: Classified,
    pub counts: Counts,
    /// Per probe, what its programs cost in the kernel (`--cost`; None: not asked).
    pub cost: Option<Vec<ProbeCost>>,
}

impl Summary {
    pub fn add(&mut self, e: &TraceEvent, c: &Contribution) {
        let t = self.probes.entry(e.probe);
        t.events += 1;
        t.bytes += e.bytes;
        t.bytes_done += e.bytes_done();
        match e.ret {
            Some(r) if r == -(libc::EAGAIN as i64) => t.would_block += 1,
            Some(r) if r < 0 => t.errors += 1,
            _ => {}
        }
        let k = &mut self.classified;
        if let Some((path, bytes)) = c.payload {
            k.paths.add(path, bytes);
        }
        k.tls_control += c.control;
        k.ciphertext += c.ciphertext;
        k.sendfile_bytes += c.sendfile.unwrap_or(0);
        match (c.ktls, c.records) {
            (_, Some(r)) => *k.records.get_or_insert(0) += r,
            (Some(_), None) => k.sends_without_records += 1,
            (None, None) => {}
        }
    }

    pub fn totals(&self, p: Probe) -> ProbeTotals {
        self.probes.get(p)
    }

    fn events(&self) -> u64 {
        self.probes.iter().map(|(_, t)| t.events).sum()
    }

    /// The `{"summary": {...}}` object `trace --json` ends with.
    pub fn to_json(&self, backend: &str, duration_s: f64) -> serde_json::Value {
        let probes: serde_json::Map<String, serde_json::Value> = self
            .probes
            .iter()
            .map(|(p, t)| {
                (
                    p.name().to_string(),
                    serde_json::to_value(t).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect();
        serde_json::json!({
            "summary": {
                "backend": backend,
                "duration_s": (duration_s * 1000.0).round() / 1000.0,
                "events": self.events(),
                "drops": self.counts.drops(),
                "returns_missed": self.counts.returns_missed,
                "skipped_by_kernel": self.counts.skipped_by_kernel,
                "undecodable": self.counts.undecodable,
                "before_start": self.counts.before_start,
                "probes": probes,
                "classified": self.classified,
                "cost": self.cost.as_ref().map(|c| cost_json(c)),
            }
        })
    }

    /// The text block `trace` ends with.
    pub fn render_text(&self, backend: &str, duration_s: f64) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "--- summary: {} events in {:.1}s ({} backend), {} dropped\n",
            self.events(),
            duration_s,
            backend,
            self.counts.drops()
        );
        if self.probes.is_empty() {
            s.push_str("    no events\n");
        } else {
            let _ = writeln!(
                s,
                "    {:<20} {:>10} {:>16} {:>16} {:>8} {:>8}",
                "probe", "events", "bytes asked", "bytes done", "errors", "EAGAIN"
            );
            for (p, t) in self.probes.iter() {
                let _ = writeln!(
                    s,
                    "    {:<20} {:>10} {:>16} {:>16} {:>8} {:>8}",
                    p.name(),
                    t.events,
                    t.bytes,
                    t.bytes_done,
                    t.errors,
                    t.would_block
                );
            }
            let k = &self.classified;
            for p in Path::ALL.into_iter().filter(|p| k.paths.get(*p) > 0) {
                let _ = writeln!(
                    s,
                    "    payload {:<28} {:>16} bytes",
                    p.label(),
                    k.paths.get(p)
                );
            }
            if k.ciphertext > 0 || k.records.is_some() {
                let records = match k.records {
                    Some(r) => r.to_string(),
                    None => "unknown".to_string(),
                };
                let _ = writeln!(
                    s,
                    "    kernel TLS: {} bytes of ciphertext into TCP, {records} records",
                    k.ciphertext
                );
            }
        }
        if self.counts.drops() > 0 {
            let _ = writeln!(
                s,
                "    WARNING: {} events were dropped in the kernel; totals are low",
                self.counts.drops()
            );
        }
        if self.counts.returns_missed > 0 {
            let _ = writeln!(
                s,
                "    WARNING: {}",
                returns_missed_text(self.counts.returns_missed)
            );
        }
        if self.counts.skipped_by_kernel > 0 {
            let _ = writeln!(
                s,
                "    WARNING: the kernel did not run the entry program of {} calls (another BPF program, or a bpf() call touching maps, held the CPU)",
                self.counts.skipped_by_kernel
            );
        }
        if self.counts.undecodable > 0 {
            let _ = writeln!(
                s,
                "    WARNING: {} records could not be decoded",
                self.counts.undecodable
            );
        }
        if let Some(cost) = &self.cost {
            s.push_str("    in-kernel cost (BPF run-time statistics):\n");
            for c in cost {
                let ret = c.ret.map(|r| format!("; return {}", r.text()));
                let _ = writeln!(
                    s,
                    "    {:<20} {:<10} entry {}{}",
                    c.probe.name(),
                    c.via,
                    c.entry.text(),
                    ret.unwrap_or_default()
                );
            }
        }
        s
    }
}

/// `"cost"`: per probe, how it is attached and what each program cost.
fn cost_json(cost: &[ProbeCost]) -> serde_json::Value {
    cost.iter()
        .map(|c| {
            (
                c.probe.name().to_string(),
                serde_json::json!({
                    "via": c.via,
                    "entry": c.entry.to_json(),
                    "return": c.ret.map(RunCost::to_json),
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Why some calls have no event: said in `trace`'s summary and on its stderr.
pub fn returns_missed_text(n: u64) -> String {
    format!(
        "{n} of the drops are calls whose return side never ran (all of a kretprobe's \
         instances were in use, or the kernel skipped the return program)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{
        Classifier,
        tests::{TLS13, ev, under},
    };
    use ktls_trace_common::msg;

    fn add(s: &mut Summary, k: &mut Classifier, e: TraceEvent) {
        let c = k.classify(&e);
        s.add(&e, &c);
    }

    #[test]
    fn sums_per_probe_and_per_path() {
        let mut s = Summary::default();
        let mut k = Classifier::default();
        add(&mut s, &mut k, ev(Probe::DoSendfile, 1, 60, None));
        add(&mut s, &mut k, ev(Probe::DoSendfile, 1, 40, None));
        add(&mut s, &mut k, ev(Probe::DoSendfile, 1, -11, None));
        add(&mut s, &mut k, ev(Probe::DoSendfile, 1, -32, None));
        let mut tls = under(
            ev(Probe::TlsSwSendmsg, 1, 100, Some(3)),
            Probe::DoSendfile,
            Probe::DoSendfile,
        );
        tls.flags = Some(msg::MSG_SPLICE_PAGES);
        tls.records = Some(1);
        tls.tls = Some(TLS13);
        add(&mut s, &mut k, tls);
        add(
            &mut s,
            &mut k,
            under(
                ev(Probe::TcpSendmsgLocked, 1, 122, Some(3)),
                Probe::TlsSwSendmsg,
                Probe::DoSendfile,
            ),
        );
        let t = s.totals(Probe::DoSendfile);
        assert_eq!(
            t,
            ProbeTotals {
                events: 4,
                bytes: 100,
                bytes_done: 100,
                errors: 1,
                would_block: 1,
            }
        );
        assert_eq!(s.totals(Probe::TcpSendmsg), ProbeTotals::default());
        let c = &s.classified;
        assert_eq!(c.paths.get(Path::KtlsSendfile), 100);
        assert_eq!(
            (c.ciphertext, c.records, c.sendfile_bytes),
            (122, Some(1), 100)
        );
        let text = s.render_text("kprobe", 1.0);
        assert!(text.contains("payload kTLS sendfile (zero-copy)"), "{text}");
        assert!(
            text.contains("122 bytes of ciphertext into TCP, 1 records"),
            "{text}"
        );
    }

    /// The per-probe array counts what a map per probe counted, and lists the probes
    /// that had events in probe order (the text summary's rows, the JSON keys).
    #[test]
    fn per_probe_totals_match_a_map() {
        let mut s = Summary::default();
        let mut k = Classifier::default();
        let mut want: std::collections::BTreeMap<Probe, ProbeTotals> = Default::default();
        let rets = [65_536, 0, -11, -32, 1, -4095];
        for i in 0..500usize {
            // Not every probe: some never have events.
            let p = Probe::ALL[(i * 7) % 9];
            let mut e = ev(p, 1 + (i % 3) as u32, rets[i % rets.len()], Some(0x55));
            e.bytes = (i * 1_000) as u64;
            if i % 4 == 0 {
                e.ret = None;
            }
            let t = want.entry(p).or_default();
            t.events += 1;
            t.bytes += e.bytes;
            t.bytes_done += e.bytes_done();
            match e.ret {
                Some(-11) => t.would_block += 1,
                Some(r) if r < 0 => t.errors += 1,
                _ => {}
            }
            add(&mut s, &mut k, e);
        }
        let got: Vec<(Probe, ProbeTotals)> = s.probes.iter().map(|(p, t)| (p, *t)).collect();
        let want: Vec<(Probe, ProbeTotals)> = want.into_iter().collect();
        assert_eq!(got, want);
        for p in Probe::ALL {
            assert_eq!(
                s.totals(p),
                got.iter()
                    .find(|(q, _)| *q == p)
                    .map_or_else(Default::default, |(_, t)| *t)
            );
        }
        assert!(!s.probes.is_empty() && Summary::default().probes.is_empty());
        let text = s.render_text("kprobe", 1.0);
        let rows: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| Probe::ALL.iter().any(|p| p.name() == *w))
            .collect();
        let names: Vec<&str> = got.iter().map(|(p, _)| p.name()).collect();
        assert_eq!(rows, names);
        assert_eq!(s.to_json("kprobe", 1.0)["summary"]["events"], 500);
    }

    #[test]
    fn json_summary_shape() {
        let mut s = Summary::default();
        let mut k = Classifier::default();
        add(&mut s, &mut k, ev(Probe::Sendfile64, 1, 10, None));
        s.counts.ring_full = 3;
        let v = s.to_json("tracepoint", 1.23456);
        assert_eq!(v["summary"]["drops"], 3);
        assert_eq!(v["summary"]["events"], 1);
        assert_eq!(v["summary"]["probes"]["sendfile64"]["bytes_done"], 10);
        assert_eq!(v["summary"]["classified"]["sendfile_bytes"], 10);
        assert_eq!(
            v["summary"]["classified"]["records"],
            serde_json::Value::Null
        );
        assert_eq!(v["summary"]["duration_s"], 1.235);
        let text = s.render_text("tracepoint", 1.0);
        assert!(text.contains("sendfile64") && text.contains("3 events were dropped"));
        assert_eq!(v["summary"]["cost"], serde_json::Value::Null);
        assert!(!text.contains("in-kernel cost"));
    }

    #[test]
    fn cost_per_probe_and_program() {
        let mut s = Summary {
            cost: Some(vec![
                ProbeCost {
                    probe: Probe::DoSendfile,
                    via: "fentry",
                    entry: RunCost { runs: 4, ns: 1002 },
                    ret: Some(RunCost { runs: 0, ns: 0 }),
                },
                ProbeCost {
                    probe: Probe::Sendfile64,
                    via: "tracepoint",
                    entry: RunCost { runs: 3, ns: 100 },
                    ret: None,
                },
            ]),
            ..Summary::default()
        };
        s.counts.ring_full = 0;
        let v = s.to_json("kprobe", 1.0);
        let c = &v["summary"]["cost"];
        assert_eq!(c["do_sendfile"]["via"], "fentry");
        assert_eq!(c["do_sendfile"]["entry"]["runs"], 4);
        assert_eq!(c["do_sendfile"]["entry"]["ns"], 1002);
        assert_eq!(c["do_sendfile"]["entry"]["ns_per_run"], 250.5);
        assert_eq!(
            c["do_sendfile"]["return"]["ns_per_run"],
            serde_json::Value::Null
        );
        assert_eq!(c["sendfile64"]["return"], serde_json::Value::Null);
        assert_eq!(c["sendfile64"]["entry"]["ns_per_run"], 33.3);
        let text = s.render_text("kprobe", 1.0);
        assert!(
            text.contains("do_sendfile")
                && text.contains("fentry")
                && text.contains("4 runs, 250 ns/run; return no runs"),
            "{text}"
        );
        assert!(text.contains("3 runs, 33 ns/run\n"), "{text}");
    }
}
