//! The user-space side of issue 11's table, measured on the build machine itself: the
//! `trace --json` hot path (decode, classify, summary, JSON line) of the criterion bench
//! `ktls-trace/benches/pipeline.rs`, in events per second on one core. The guests measure
//! what tracing costs the traced server; this measures how many events the reader keeps up
//! with, which the guests' emulated CPUs cannot say.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::cmd;

/// The criterion benchmark that is `trace --json`'s user-space path.
const BENCH: &str = "trace_json_path";

/// Its result: time per iteration (criterion's slope estimate) and events per iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostPath {
    pub ns_per_iter: f64,
    pub events_per_iter: u64,
}

impl HostPath {
    pub fn ns_per_event(&self) -> f64 {
        self.ns_per_iter / self.events_per_iter.max(1) as f64
    }

    pub fn events_per_s(&self) -> f64 {
        1e9 / self.ns_per_event()
    }

    pub fn to_json(self) -> Value {
        json!({
            "benchmark": format!("pipeline/{BENCH}"),
            "ns_per_event": self.ns_per_event(),
            "events_per_s": self.events_per_s(),
        })
    }
}

/// Runs the benchmark (2 s warm-up, 6 s of samples) and reads criterion's files.
pub fn measure(target: &Path) -> Result<HostPath> {
    cmd::run(
        cmd::cargo()
            .args(["bench", "-p", "ktls-trace", "--bench", "pipeline", "--"])
            .args([BENCH, "--warm-up-time", "2", "--measurement-time", "6"])
            .args(["--noplot"])
            .current_dir(cmd::workspace_root()),
    )?;
    let dir = target.join("criterion/pipeline").join(BENCH).join("new");
    let read = |name: &str| -> Result<Value> {
        let p = dir.join(name);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    };
    parse(&read("estimates.json")?, &read("benchmark.json")?)
}

/// Criterion's `estimates.json` (slope, else mean, in ns per iteration) and
/// `benchmark.json` (`throughput.Elements`: events per iteration).
pub fn parse(estimates: &Value, benchmark: &Value) -> Result<HostPath> {
    let ns_per_iter = ["slope", "mean"]
        .iter()
        .find_map(|k| estimates.pointer(&format!("/{k}/point_estimate"))?.as_f64())
        .context("criterion's estimates.json has no slope or mean")?;
    let events_per_iter = benchmark
        .pointer("/throughput/Elements")
        .and_then(Value::as_u64)
        .context("criterion's benchmark.json has no element throughput")?;
    Ok(HostPath {
        ns_per_iter,
        events_per_iter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_files_give_events_per_second() {
        let est =
            json!({"mean": {"point_estimate": 271_000.0}, "slope": {"point_estimate": 270_000.0}});
        let bench = json!({"throughput": {"Elements": 2700}});
        let h = parse(&est, &bench).unwrap();
        assert_eq!(h.ns_per_event(), 100.0);
        assert_eq!(h.events_per_s(), 1e7);
        let no_slope = json!({"mean": {"point_estimate": 540_000.0}});
        assert_eq!(parse(&no_slope, &bench).unwrap().ns_per_event(), 200.0);
        assert!(parse(&json!({}), &bench).is_err());
        assert!(parse(&est, &json!({"throughput": {"Bytes": 1}})).is_err());
    }
}
