//! Aggregation: pure code fed by decoded events. [`Summary`] is what `trace` prints when
//! it stops: events and bytes per probe, and drops.

use std::collections::BTreeMap;

use ktls_trace_common::Probe;
use serde::Serialize;

use crate::event::TraceEvent;

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

/// Everything `trace` counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub probes: BTreeMap<Probe, ProbeTotals>,
    pub events: u64,
    /// Events the kernel could not deliver (ring buffer full, in-flight map full).
    pub drops: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
}

impl Summary {
    pub fn add(&mut self, e: &TraceEvent) {
        self.events += 1;
        let t = self.probes.entry(e.probe).or_default();
        t.events += 1;
        t.bytes += e.bytes;
        t.bytes_done += e.bytes_done();
        match e.ret {
            Some(r) if r == -(libc::EAGAIN as i64) => t.would_block += 1,
            Some(r) if r < 0 => t.errors += 1,
            _ => {}
        }
    }

    pub fn totals(&self, p: Probe) -> ProbeTotals {
        self.probes.get(&p).copied().unwrap_or_default()
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
                "events": self.events,
                "drops": self.drops,
                "undecodable": self.undecodable,
                "probes": probes,
            }
        })
    }

    /// The text block `trace` ends with.
    pub fn render_text(&self, backend: &str, duration_s: f64) -> String {
        let mut s = format!(
            "--- summary: {} events in {:.1}s ({} backend), {} dropped\n",
            self.events, duration_s, backend, self.drops
        );
        if self.probes.is_empty() {
            s.push_str("    no events\n");
        } else {
            s.push_str(&format!(
                "    {:<20} {:>10} {:>16} {:>16} {:>8} {:>8}\n",
                "probe", "events", "bytes asked", "bytes done", "errors", "EAGAIN"
            ));
            for (p, t) in &self.probes {
                s.push_str(&format!(
                    "    {:<20} {:>10} {:>16} {:>16} {:>8} {:>8}\n",
                    p.name(),
                    t.events,
                    t.bytes,
                    t.bytes_done,
                    t.errors,
                    t.would_block
                ));
            }
        }
        if self.drops > 0 {
            s.push_str(&format!(
                "    WARNING: {} events were dropped in the kernel (ring buffer full); totals are low\n",
                self.drops
            ));
        }
        if self.undecodable > 0 {
            s.push_str(&format!(
                "    WARNING: {} records could not be decoded\n",
                self.undecodable
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(probe: Probe, bytes: u64, ret: Option<i64>) -> TraceEvent {
        TraceEvent {
            ts_ns: 0,
            pid: 1,
            tid: 1,
            comm: "x".into(),
            probe,
            bytes,
            ret,
            latency_ns: None,
            sock: None,
            flags: None,
            fds: None,
            parent: None,
            root: None,
            head: None,
        }
    }

    #[test]
    fn sums_per_probe() {
        let mut s = Summary::default();
        s.add(&ev(Probe::DoSendfile, 100, Some(60)));
        s.add(&ev(Probe::DoSendfile, 40, Some(40)));
        s.add(&ev(Probe::DoSendfile, 10, Some(-11)));
        s.add(&ev(Probe::DoSendfile, 10, Some(-32)));
        s.add(&ev(Probe::TcpSendmsg, 5, None));
        let t = s.totals(Probe::DoSendfile);
        assert_eq!(
            t,
            ProbeTotals {
                events: 4,
                bytes: 160,
                bytes_done: 100,
                errors: 1,
                would_block: 1,
            }
        );
        assert_eq!(s.totals(Probe::TcpSendmsg).bytes_done, 0);
        assert_eq!(s.events, 5);
        assert_eq!(s.totals(Probe::TlsSwSendmsg), ProbeTotals::default());
    }

    #[test]
    fn json_summary_shape() {
        let mut s = Summary::default();
        s.add(&ev(Probe::Sendfile64, 10, Some(10)));
        s.drops = 3;
        let v = s.to_json("tracepoint", 1.23456);
        assert_eq!(v["summary"]["drops"], 3);
        assert_eq!(v["summary"]["probes"]["sendfile64"]["bytes_done"], 10);
        assert_eq!(v["summary"]["duration_s"], 1.235);
        let text = s.render_text("tracepoint", 1.0);
        assert!(text.contains("sendfile64") && text.contains("3 events were dropped"));
    }
}
