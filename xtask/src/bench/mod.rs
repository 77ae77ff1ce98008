//! `cargo xtask bench`: what the transmit paths cost, and what tracing costs, measured on
//! a real kernel TLS kernel — in the QEMU/TCG guest on the build machines.
//!
//! One guest run per kernel measures, with `ktls-trace load` (4 MiB file, 1 connection,
//! TLS 1.3 AES-128-GCM where there is TLS):
//!
//! - the four transmit paths side by side: ktls-sendfile, ktls-write, userspace-tls,
//!   plain-sendfile (server throughput and server-thread CPU seconds per GiB);
//! - tracing overhead on ktls-sendfile: no tracer, `trace --json` of the whole system,
//!   `top --once` of the whole system, `trace --json --comm ktls-load-srv` (filtered in the
//!   kernel), and a peer: a bpftrace script counting bytes per probe on the same functions
//!   (bench/bpftrace.rs); plus each tracer's events/s, drops, own CPU time and wake-ups.
//!
//! Every configuration runs `--runs` times, interleaved (one round of every configuration,
//! then the next round), and each ratio is taken within a round, against that round's
//! untraced ktls-sendfile run, then the median over the rounds is reported. TCG makes
//! absolute numbers meaningless; ratios from one guest run are what count
//! (docs/performance.md).
//!
//! The guest prints `KT-BENCH <run id> ...` lines on the console; the host reads them back
//! from the console lines `vm::run_script` returns, prints a table and writes the raw results
//! to `target/bench/<kernel>.json`. A failed measurement (load or tracer error, missing
//! line) fails the command after the table; slow numbers never do.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::{
    build, cmd, setup,
    vm::{self, KernelChoice, Series},
};

mod bpftrace;
mod host;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which kernel series to boot.
    #[arg(long, value_enum, default_value = "6.12")]
    pub kernel: KernelChoice,

    /// Seconds of load in each run.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(2..=30))]
    pub seconds: u32,

    /// Rounds: every tracer configuration runs this many times (the other transmit paths
    /// and the extra tracers in the first two), the median is reported.
    #[arg(long, value_name = "N", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=9))]
    pub runs: u32,
}

/// A tracer configuration, measured on the [`BASELINE`] mode. The untraced configurations
/// are the load's modes, as `ktls-trace load --list-modes` names them in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Name in the guest lines and the JSON.
    pub name: &'static str,
    /// Which tracer runs during the load.
    pub tracer: Tracer,
    /// What the table calls it.
    pub label: &'static str,
    /// Runs in every round (the overhead figures the targets are about); otherwise only in
    /// the first [`PATH_ROUNDS`], like the other transmit paths (comparisons whose medians
    /// need fewer rounds).
    pub every_round: bool,
}

impl Config {
    /// The rounds this configuration runs in, of `runs`.
    pub fn rounds(&self, runs: u32) -> u32 {
        if self.every_round {
            runs
        } else {
            runs.min(PATH_ROUNDS)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracer {
    /// `ktls-trace trace --json` of the whole system.
    TraceAll,
    /// `ktls-trace top --once --json` of the whole system (aggregation only, no output per
    /// event).
    TopAll,
    /// `ktls-trace trace --json --comm ktls-load-srv`: filtered in the kernel.
    TraceComm,
    /// `trace --json --backend fentry`: the functions of vmlinux on BPF trampolines, the
    /// same output; against TraceAll, what trampolines save per call.
    TraceFentry,
    /// The peer: `bpftrace -f json` running [`bpftrace::program`] (whole system, the
    /// same functions, bytes per probe split by sendfile nesting).
    Bpftrace,
    /// `trace --json --cost` on kprobes / on BPF trampolines: what each program costs in
    /// the kernel (run-time statistics). Measured once, after the rounds: counting adds
    /// clock reads to every program run, so these runs are no overhead figures.
    CostKprobe,
    CostFentry,
}

impl Tracer {
    /// The guest script's word for it.
    fn kind(self) -> &'static str {
        match self {
            Tracer::TraceAll => "trace",
            Tracer::TopAll => "top",
            Tracer::TraceComm => "trace-comm",
            Tracer::TraceFentry => "trace-fentry",
            Tracer::Bpftrace => "bpftrace",
            Tracer::CostKprobe => "cost-kprobe",
            Tracer::CostFentry => "cost-fentry",
        }
    }
}

/// Rounds that also run the other transmit paths (ktls-write, userspace-tls,
/// plain-sendfile). Their ratios to the baseline barely move between rounds, and each is a
/// run of its own; the later rounds run only the baseline and the tracers, whose overhead
/// ratios are what needs many rounds (7 in under 25 minutes for three kernels).
pub const PATH_ROUNDS: u32 = 2;

/// The untraced mode every ratio of a round is taken against: the zero-copy path, whose
/// tracing overhead is what people who leave the tracer running pay.
pub const BASELINE: &str = "ktls-sendfile";

/// The tracers, in the order each round runs them (one after each load mode).
pub const CONFIGS: [Config; 5] = [
    Config {
        name: "trace-all",
        tracer: Tracer::TraceAll,
        label: "trace --json (whole system)",
        every_round: true,
    },
    Config {
        name: "top-all",
        tracer: Tracer::TopAll,
        label: "top --once (whole system)",
        every_round: true,
    },
    Config {
        name: "trace-comm",
        tracer: Tracer::TraceComm,
        label: "trace --json --comm ktls-load-srv",
        every_round: false,
    },
    Config {
        name: "trace-fentry",
        tracer: Tracer::TraceFentry,
        label: "trace --json --backend fentry",
        every_round: false,
    },
    Config {
        name: "bpftrace",
        tracer: Tracer::Bpftrace,
        label: "bpftrace script (whole system)",
        every_round: true,
    },
];

/// The in-kernel cost runs, once each on the [`BASELINE`] mode after the rounds.
pub const COST_CONFIGS: [Config; 2] = [
    Config {
        name: "cost-kprobe",
        tracer: Tracer::CostKprobe,
        label: "trace --json --cost --backend kprobe",
        every_round: true,
    },
    Config {
        name: "cost-fentry",
        tracer: Tracer::CostFentry,
        label: "trace --json --cost --backend fentry",
        every_round: true,
    },
];

fn config(name: &str) -> Option<&'static Config> {
    CONFIGS.iter().chain(&COST_CONFIGS).find(|c| c.name == name)
}

pub fn bench_cmd(args: &BenchArgs) -> Result<()> {
    setup::setup(false)?;
    let artifacts = build::build(build::Profile::Release)?;
    // The peer tracer: only this image carries it (about 200 MB with its libraries).
    let peer = vm::prepare_tool(bpftrace::PACKAGE, &[bpftrace::EXECUTABLE])
        .context("preparing bpftrace for the bench guest")?;
    eprintln!(
        "bench: bpftrace {} from {}",
        peer.version,
        peer.root.display()
    );
    let target = target_dir()?;
    // The user-space figure first, while the machine is otherwise idle: on the host, not
    // in a guest (its emulated CPU would say nothing about a real one).
    let host_path =
        host::measure(&target).context("the trace --json path benchmark (criterion)")?;
    eprintln!(
        "bench: trace --json user-space path: {:.1} M events/s ({:.0} ns/event, criterion on this machine)",
        host_path.events_per_s() / 1e6,
        host_path.ns_per_event()
    );
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut failed = Vec::new();
    for series in args.kernel.series() {
        let label = series.label();
        if !series.has_ktls() {
            // Every configuration but plain-sendfile measures kernel TLS.
            if args.kernel != KernelChoice::All {
                bail!("bench: the {label} kernel has no kernel TLS, there is nothing to measure");
            }
            eprintln!("bench: skipping {label}: no kernel TLS");
            continue;
        }
        let run_id = run_id();
        let script = guest_script(&run_id, args.seconds, args.runs);
        // Per run: the load, plus up to ~30 s of tracer attach and detach under TCG, and
        // bpftrace's compile (LLVM, emulated) once per round. Four load modes and the
        // tracers, every round.
        let configs = 4 + CONFIGS.len() as u64;
        let per_run = u64::from(args.seconds) + 40;
        let per_round = per_run * configs + BPFTRACE_START_S;
        let cost_runs = per_run * COST_CONFIGS.len() as u64;
        let timeout = Duration::from_secs(240 + per_round * u64::from(args.runs) + cost_runs);
        let started = std::time::Instant::now();
        let console = vm::run_script_with(
            series,
            &artifacts,
            &script,
            timeout,
            vm::Vcpus::Parallel,
            Some(&peer),
        )
        .with_context(|| format!("the {label} bench guest"))?;
        let elapsed = started.elapsed();
        let results = parse(&console.join("\n"), &run_id, args.runs);
        let mut report = report_json(series, args, &results, elapsed);
        if let Some(r) = report.as_object_mut() {
            // The host-side package version; the guest's `bpftrace --version` is in
            // bpftrace_guest.
            r.insert("bpftrace".into(), json!(peer.version));
            r.insert("trace_json_path".into(), host_path.to_json());
        }
        let path = out_dir.join(format!("{label}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!();
        print!("{}", render_table(&report));
        println!(
            "trace --json user-space path (criterion, this machine, not the guest): {:.1} M events/s, {:.0} ns/event",
            host_path.events_per_s() / 1e6,
            host_path.ns_per_event()
        );
        println!("raw results: {}", path.display());
        if !results.problems.is_empty() {
            for p in &results.problems {
                eprintln!("  FAILED [{label}] {p}");
            }
            failed.push(label);
        }
    }
    if !failed.is_empty() {
        bail!(
            "bench: measurements failed on {} (console: target/vm/<kernel>/console-demo.log)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Seconds a bpftrace start may take beyond the other tracers' under TCG: it compiles
/// its program with LLVM, emulated.
const BPFTRACE_START_S: u64 = 120;

/// A token that marks this run's lines (the console log is shared with `demo`).
fn run_id() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:x}", t.as_secs(), std::process::id())
}

/// The tracer configurations that run in every round (`true`) or in the first rounds only.
fn every_round(every: bool) -> Vec<Config> {
    CONFIGS
        .iter()
        .filter(|c| c.every_round == every)
        .copied()
        .collect()
}

/// The guest plan (guest.sh, with this run's values). Every measurement prints one
/// `KT-BENCH <id> ...` line (formats in [`parse`]).
pub fn guest_script(run_id: &str, seconds: u32, runs: u32) -> String {
    let words = |configs: &[Config]| -> String {
        configs
            .iter()
            .map(|c| format!("{}:{}", c.name, c.tracer.kind()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    include_str!("guest.sh")
        .replace("@COSTS@", &words(&COST_CONFIGS))
        .replace("@RUN_ID@", run_id)
        .replace("@SECONDS@", &seconds.to_string())
        .replace("@RUNS@", &runs.to_string())
        .replace("@PATH_ROUNDS@", &PATH_ROUNDS.to_string())
        .replace("@TRACERS@", &words(&every_round(true)))
        .replace("@EXTRAS@", &words(&every_round(false)))
        .replace("@BASELINE@", BASELINE)
        .replace("@BPFTRACE_READY@", bpftrace::READY)
        .replace("@BPFTRACE_SENDMSG@", bpftrace::program(false).trim_end())
        .replace("@BPFTRACE_SENDPAGE@", bpftrace::program(true).trim_end())
}

/// One run of one configuration, as the guest reported it.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub load: Option<Value>,
    pub load_rc: Option<i64>,
    pub wall_s: Option<f64>,
    pub tracer: Option<TracerSample>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracerSample {
    pub rc: i64,
    /// The tracer was still running when the load ended.
    pub alive: bool,
    /// utime + stime of the tracer during the load, in clock ticks (USER_HZ = 100).
    pub ticks: u64,
    /// Voluntary context switches of the tracer's threads during the load (its wake-ups).
    pub wakeups: Option<u64>,
    pub attach_s: Option<f64>,
    pub events: Option<u64>,
    /// Records that crossed the ring buffer (trace: one per event; top: none when the
    /// kernel adds calls up; bpftrace counts in maps: none).
    pub ring_records: Option<u64>,
    pub drops: Option<u64>,
    /// Plaintext bytes kernel TLS took (bytes done at tls_sw_sendmsg / tls_sw_sendpage),
    /// where the tracer reports them per probe (trace, bpftrace): a check that the tracer
    /// saw what the load served.
    pub ktls_bytes: Option<u64>,
    /// bpftrace's totals per function (bench/bpftrace.rs `to_json`).
    pub probes: Option<Value>,
    /// `trace --cost`: the summary's `cost` object (per probe: via, entry, return).
    pub cost: Option<Value>,
    /// The tracer's output could not be read.
    pub error: Option<String>,
}

/// Everything parsed from one guest run.
#[derive(Debug, Default)]
pub struct Results {
    pub kernel: Option<String>,
    /// The load modes the binary named (the untraced configurations).
    pub modes: Vec<String>,
    /// `aesni=yes|no gcm_aes_drivers=...`: the crypto kernel TLS ran on.
    pub crypto: Option<String>,
    /// `bpftrace v0.17.0 program=...`: the peer's version and which era's program ran.
    pub bpftrace: Option<String>,
    pub samples: BTreeMap<(String, u32), Sample>,
    pub problems: Vec<String>,
    pub done: bool,
}

/// Reads the `KT-BENCH <run id> ...` lines:
///
/// ```text
/// start kernel=<uname -r> cpus=N runs=N seconds=N
/// modes <mode> <mode> ...
/// crypto aesni=yes|no gcm_aes_drivers=...
/// bpftrace bpftrace v0.17.0 program=/tmp/kt-sendmsg.bt
/// tracer <config> <round> rc=N alive=0|1 ticks=N attach_s=X <trace summary | top JSON | {"bpftrace":[...]}>
/// load <config> <round> rc=N wall_s=X <load report JSON>
/// error <words>
/// done uptime=X
/// ```
pub fn parse(console: &str, run_id: &str, runs: u32) -> Results {
    let mut r = Results::default();
    let marker = format!("KT-BENCH {run_id} ");
    for line in console.lines() {
        let Some(pos) = line.find(&marker) else {
            continue;
        };
        let rest = &line[pos + marker.len()..];
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "start" => {
                r.kernel = field(rest, "kernel").map(str::to_string);
            }
            "modes" => r.modes = rest.split_whitespace().map(str::to_string).collect(),
            "load" | "tracer" => {
                let mut it = rest.splitn(3, ' ');
                let (Some(name), Some(round), Some(rest)) = (it.next(), it.next(), it.next())
                else {
                    r.problems.push(format!("unreadable line: {line}"));
                    continue;
                };
                let Ok(round) = round.parse::<u32>() else {
                    r.problems.push(format!("unreadable line: {line}"));
                    continue;
                };
                let s = r.samples.entry((name.to_string(), round)).or_default();
                if kind == "load" {
                    s.load_rc = field(rest, "rc").and_then(|v| v.parse().ok());
                    s.wall_s = field(rest, "wall_s").and_then(|v| v.parse().ok());
                    s.load = json_tail(rest);
                    if s.load_rc == Some(0) && s.load.is_none() {
                        r.problems.push(format!(
                            "{name} round {round}: the load report is not readable JSON"
                        ));
                    }
                } else {
                    s.tracer = Some(tracer_sample(rest));
                }
            }
            "crypto" => r.crypto = Some(rest.trim().to_string()),
            "bpftrace" => r.bpftrace = Some(rest.trim().to_string()),
            "error" => r.problems.push(rest.to_string()),
            "done" => r.done = true,
            _ => {}
        }
    }
    if r.kernel.is_none() {
        r.problems
            .push("the guest never started the bench (no start line)".into());
    }
    if !r.done {
        r.problems
            .push("the guest did not finish the bench (no done line)".into());
    }
    if !r.modes.iter().any(|m| m == BASELINE) {
        r.problems.push(format!(
            "the binary names no {BASELINE} mode: {:?}",
            r.modes
        ));
    }
    let path_rounds = runs.min(PATH_ROUNDS);
    let expected = r
        .modes
        .iter()
        .map(|m| {
            let rounds = if m == BASELINE { runs } else { path_rounds };
            (m.clone(), false, rounds)
        })
        .chain(
            CONFIGS
                .iter()
                .map(|c| (c.name.to_string(), true, c.rounds(runs))),
        )
        .collect::<Vec<_>>();
    for (name, traced, rounds) in expected {
        for round in 1..=rounds {
            match r.samples.get(&(name.clone(), round)) {
                None => r.problems.push(format!("{name} round {round}: no result")),
                Some(s) => {
                    if s.load.is_none() {
                        r.problems
                            .push(format!("{name} round {round}: no load report"));
                    }
                    if traced {
                        match &s.tracer {
                            None => r
                                .problems
                                .push(format!("{name} round {round}: no tracer result")),
                            Some(t) if !t.alive => r.problems.push(format!(
                                "{name} round {round}: the tracer ended before the load did"
                            )),
                            Some(TracerSample { error: Some(e), .. }) => r
                                .problems
                                .push(format!("{name} round {round}: tracer output: {e}")),
                            Some(t) if t.events.is_none() => r.problems.push(format!(
                                "{name} round {round}: no event count from the tracer"
                            )),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
    }
    for c in &COST_CONFIGS {
        let name = c.name;
        match r
            .samples
            .get(&(name.to_string(), 1))
            .and_then(|s| s.tracer.as_ref())
        {
            None => r.problems.push(format!("{name}: no tracer result")),
            Some(TracerSample { error: Some(e), .. }) => {
                r.problems.push(format!("{name}: tracer output: {e}"))
            }
            Some(t) if t.cost.is_none() => r
                .problems
                .push(format!("{name}: no cost in the trace summary")),
            Some(_) => {}
        }
    }
    r
}

/// The in-kernel cost per probe and backend, from the cost runs: for each probe, its
/// via and ns per run of the entry and return programs under each backend, and the
/// fentry/kprobe ratio of entry + return where the probe ran on trampolines.
pub fn program_cost(r: &Results) -> Value {
    let cost_of = |name: &str| -> Option<&Value> {
        r.samples
            .get(&(name.to_string(), 1))?
            .tracer
            .as_ref()?
            .cost
            .as_ref()
    };
    let ns = |c: &Value, side: &str| c[side]["ns_per_run"].as_f64();
    let mut probes = serde_json::Map::new();
    if let Some(Value::Object(k)) = cost_of("cost-kprobe") {
        for (probe, kc) in k {
            let fc = cost_of("cost-fentry").map(|f| &f[probe]);
            let per_call = |c: &Value| Some(ns(c, "entry")? + ns(c, "return").unwrap_or(0.0));
            let ratio = fc
                .filter(|f| f["via"] == "fentry")
                .and_then(|f| Some(per_call(f)? / per_call(kc)?));
            probes.insert(
                probe.clone(),
                json!({
                    "kprobe": {"via": kc["via"], "entry_ns": ns(kc, "entry"), "return_ns": ns(kc, "return"), "runs": kc["entry"]["runs"]},
                    "fentry": fc.map(|f| json!({"via": f["via"], "entry_ns": ns(f, "entry"), "return_ns": ns(f, "return"), "runs": f["entry"]["runs"]})),
                    "fentry_to_kprobe": ratio,
                }),
            );
        }
    }
    Value::Object(probes)
}

/// `key=value` among space-separated words.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// The JSON object that ends a line.
fn json_tail(text: &str) -> Option<Value> {
    let start = text.find('{')?;
    serde_json::from_str(text[start..].trim()).ok()
}

fn tracer_sample(text: &str) -> TracerSample {
    let num = |k: &str| field(text, k).and_then(|v| v.parse::<i64>().ok());
    let mut t = TracerSample {
        rc: num("rc").unwrap_or(-1),
        alive: num("alive") == Some(1),
        ticks: num("ticks").unwrap_or(0).max(0) as u64,
        wakeups: num("wakeups").and_then(|w| u64::try_from(w).ok()),
        attach_s: field(text, "attach_s").and_then(|v| v.parse().ok()),
        events: None,
        ring_records: None,
        drops: None,
        ktls_bytes: None,
        probes: None,
        cost: None,
        error: None,
    };
    match json_tail(text) {
        // trace --json: {"summary":{"events":N,"drops":N,"probes":{...},...}}
        Some(v) if v.get("summary").is_some() => {
            t.events = v.pointer("/summary/events").and_then(Value::as_u64);
            t.ring_records = t.events;
            t.drops = v.pointer("/summary/drops").and_then(Value::as_u64);
            t.cost = v
                .pointer("/summary/cost")
                .filter(|c| c.is_object())
                .cloned();
            t.ktls_bytes = Some(
                bpftrace::KTLS_FUNCS
                    .iter()
                    .filter_map(|f| {
                        v.pointer(&format!("/summary/probes/{f}/bytes_done"))?
                            .as_u64()
                    })
                    .sum(),
            );
        }
        // The bpftrace peer: {"bpftrace":[<map lines>]}. It counts in kernel maps and
        // loses nothing to a ring buffer, so there are no drops to report.
        Some(v) if v.get("bpftrace").is_some() => match bpftrace::parse(&v) {
            Ok(totals) => {
                t.events = Some(bpftrace::events(&totals));
                t.ring_records = Some(0);
                t.ktls_bytes = Some(bpftrace::ktls_bytes(&totals));
                t.probes = Some(bpftrace::to_json(&totals));
            }
            Err(e) => t.error = Some(format!("{e:#}")),
        },
        // top --once --json: {"kernel":..,"events":N,"drops_total":N,...}
        Some(v) => {
            t.events = v.get("events").and_then(Value::as_u64);
            t.ring_records = v.get("ring_records_total").and_then(Value::as_u64);
            t.drops = v.get("drops_total").and_then(Value::as_u64);
        }
        None => {}
    }
    t
}

/// Median of the values (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median, min and max as JSON (null when there are no values).
fn stats(v: &[f64]) -> Value {
    match median(v) {
        None => Value::Null,
        Some(m) => json!({
            "median": m,
            "min": v.iter().copied().fold(f64::INFINITY, f64::min),
            "max": v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "n": v.len(),
        }),
    }
}

/// The measured figures of one sample.
fn metric(s: &Sample, what: &str) -> Option<f64> {
    let load = s.load.as_ref()?;
    let server = load.get("server")?;
    let body = server.get("body_bytes")?.as_f64()?;
    let gib = body / f64::from(1u32 << 30);
    let t = s.tracer.as_ref();
    match what {
        "throughput" => server.get("throughput_bytes_per_sec")?.as_f64(),
        "server_cpu_per_gib" => server.pointer("/cpu/s_per_gib")?.as_f64(),
        "process_cpu_per_gib" => load.pointer("/cpu/s_per_gib")?.as_f64(),
        "events_per_s" => Some(t?.events? as f64 / server.get("seconds")?.as_f64()?),
        "drops" => Some(t?.drops? as f64),
        "ring_records_per_mib" => Some(t?.ring_records? as f64 * 1_048_576.0 / body),
        "tracer_cpu_s" => Some(t?.ticks as f64 / 100.0),
        "tracer_cpu_per_gib" => Some(t?.ticks as f64 / 100.0 / gib),
        // What the machine pays per GiB served: the server thread plus the tracer (if any).
        "total_cpu_per_gib" => Some(
            server.pointer("/cpu/s_per_gib")?.as_f64()?
                + t.map_or(0.0, |t| t.ticks as f64 / 100.0 / gib),
        ),
        // Share of one CPU the tracer used while the load ran.
        "tracer_cpu_share" => Some(t?.ticks as f64 / 100.0 / s.wall_s?),
        "tracer_us_per_event" => Some(t?.ticks as f64 * 1e4 / t?.events? as f64),
        "attach_s" => t?.attach_s,
        // About 1.0: the tracer saw the plaintext the load served (plus its headers).
        "ktls_bytes_per_served" => {
            Some(t?.ktls_bytes? as f64 / server.get("body_bytes")?.as_f64()?)
        }
        "events_per_wakeup" => Some(t?.events? as f64 / t?.wakeups?.max(1) as f64),
        _ => None,
    }
}

/// Per-round ratios of `what` between config `name` and the round's baseline.
fn ratios(r: &Results, name: &str, what: &str, runs: u32) -> Vec<f64> {
    (1..=runs)
        .filter_map(|round| {
            let a = metric(r.samples.get(&(name.to_string(), round))?, what)?;
            let b = metric(r.samples.get(&(BASELINE.to_string(), round))?, what)?;
            (b > 0.0).then_some(a / b)
        })
        .collect()
}

fn values(r: &Results, name: &str, what: &str, runs: u32) -> Vec<f64> {
    (1..=runs)
        .filter_map(|round| metric(r.samples.get(&(name.to_string(), round))?, what))
        .collect()
}

/// The JSON written to target/bench/<kernel>.json: summary (medians and ratios) and
/// every raw report.
pub fn report_json(series: Series, args: &BenchArgs, r: &Results, elapsed: Duration) -> Value {
    let runs = args.runs;
    let cfg_summary = |name: &str, keys: &[&str]| -> Value {
        let mut m = serde_json::Map::new();
        let c = config(name);
        m.insert("config".into(), json!(name));
        m.insert("label".into(), json!(c.map(|c| c.label)));
        for k in keys {
            m.insert((*k).into(), stats(&values(r, name, k, runs)));
        }
        for k in ["throughput", "server_cpu_per_gib", "total_cpu_per_gib"] {
            m.insert(format!("{k}_ratio"), stats(&ratios(r, name, k, runs)));
        }
        Value::Object(m)
    };
    let raw: Vec<Value> = r
        .samples
        .iter()
        .map(|((name, round), s)| {
            json!({
                "config": name,
                "round": round,
                "load_rc": s.load_rc,
                "wall_s": s.wall_s,
                "tracer": s.tracer.as_ref().map(|t| json!({
                    "rc": t.rc, "alive": t.alive, "cpu_ticks": t.ticks, "wakeups": t.wakeups,
                    "attach_s": t.attach_s, "events": t.events, "ring_records": t.ring_records, "drops": t.drops,
                    "ktls_bytes": t.ktls_bytes, "probes": t.probes, "cost": t.cost,
                })),
                "load": s.load,
            })
        })
        .collect();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "series": series.label(),
        "kernel": r.kernel,
        "crypto": r.crypto,
        "bpftrace_guest": r.bpftrace,
        "date": utc_date(),
        "unix_time": unix,
        "machine": {
            "host_cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "guest": "qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048",
        },
        "runs": runs,
        "seconds": args.seconds,
        "workload": "ktls-trace load --file-size 4M (default), 1 connection, TLS 1.3 AES-128-GCM (plain-sendfile: no TLS)",
        "elapsed_s": elapsed.as_secs_f64(),
        "paths": r.modes.iter().map(|n| cfg_summary(n, &["throughput", "server_cpu_per_gib", "process_cpu_per_gib"])).collect::<Vec<_>>(),
        "tracing": std::iter::once(BASELINE).chain(CONFIGS.iter().map(|c| c.name)).map(|n| cfg_summary(n, &[
            "throughput", "server_cpu_per_gib", "events_per_s", "drops", "tracer_cpu_s",
            "tracer_cpu_per_gib", "tracer_cpu_share", "tracer_us_per_event", "events_per_wakeup",
            "attach_s", "ktls_bytes_per_served", "ring_records_per_mib",
        ])).collect::<Vec<_>>(),
        "program_cost": program_cost(r),
        "problems": r.problems,
        "raw": raw,
    })
}

fn utc_date() -> Option<String> {
    let out = cmd::stdout(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])).ok()?;
    Some(out.trim().to_string())
}

/// The table printed after the guest run, from the report JSON.
pub fn render_table(report: &Value) -> String {
    let med = |v: &Value, k: &str| {
        v.get(k)
            .and_then(|s| s.get("median"))
            .and_then(Value::as_f64)
    };
    let ratio = |v: &Value, k: &str| -> String {
        let s = &v[k];
        match (
            s.get("median").and_then(Value::as_f64),
            s.get("min").and_then(Value::as_f64),
            s.get("max").and_then(Value::as_f64),
        ) {
            (Some(m), Some(lo), Some(hi)) => format!("{m:.2} [{lo:.2}-{hi:.2}]"),
            _ => "-".into(),
        }
    };
    let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map(f).unwrap_or_else(|| "-".into());
    let mut s = String::new();
    s.push_str(&format!(
        "ktls-trace bench: kernel {} (QEMU/TCG guest, 2 vCPUs), {} round(s) of {} s per configuration\n",
        report["kernel"].as_str().unwrap_or("?"),
        report["runs"],
        report["seconds"],
    ));
    if let Some(c) = report["crypto"].as_str() {
        s.push_str(&format!("guest crypto: {c}\n"));
    }
    if let Some(b) = report["bpftrace_guest"].as_str() {
        s.push_str(&format!("peer: {b}\n"));
    }
    s.push_str(
        "median over rounds [min-max]; ratios are taken within a round against that round's untraced ktls-sendfile run\n\n",
    );
    s.push_str("Transmit paths (ktls-trace load; ratios to ktls-sendfile)\n");
    s.push_str(&format!(
        "  {:<16} {:>12} {:>20} {:>14} {:>20}\n",
        "mode", "throughput", "throughput ratio", "srv CPU s/GiB", "srv CPU/GiB ratio"
    ));
    for p in report["paths"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {:<16} {:>12} {:>20} {:>14} {:>20}\n",
            p["config"].as_str().unwrap_or("?"),
            opt(med(p, "throughput"), &|b| format!("{:.1} MB/s", b / 1e6)),
            ratio(p, "throughput_ratio"),
            opt(med(p, "server_cpu_per_gib"), &|c| format!("{c:.2}")),
            ratio(p, "server_cpu_per_gib_ratio"),
        ));
    }
    s.push_str("\nTracing overhead on ktls-sendfile (ratios to no tracer)\n");
    s.push_str(&format!(
        "  {:<34} {:>18} {:>18} {:>18}\n",
        "tracer", "throughput ratio", "srv CPU/GiB ratio", "+tracer CPU ratio"
    ));
    let tracing: Vec<&Value> = report["tracing"].as_array().into_iter().flatten().collect();
    let label = |t: &Value| -> String {
        match t["config"].as_str() {
            Some(BASELINE) => "none".into(),
            n => t["label"].as_str().or(n).unwrap_or("?").into(),
        }
    };
    for t in &tracing {
        s.push_str(&format!(
            "  {:<34} {:>18} {:>18} {:>18}\n",
            label(t),
            ratio(t, "throughput_ratio"),
            ratio(t, "server_cpu_per_gib_ratio"),
            ratio(t, "total_cpu_per_gib_ratio"),
        ));
    }
    s.push_str("\nThe tracers themselves (medians)\n");
    s.push_str(&format!(
        "  {:<34} {:>9} {:>8} {:>6} {:>11} {:>9} {:>8} {:>8} {:>12}\n",
        "tracer",
        "events/s",
        "rec/MiB",
        "drops",
        "tracer CPU",
        "us/event",
        "ev/wake",
        "attach",
        "kTLS/served"
    ));
    for t in tracing.iter().filter(|t| t["config"] != BASELINE) {
        s.push_str(&format!(
            "  {:<34} {:>9} {:>8} {:>6} {:>11} {:>9} {:>8} {:>8} {:>12}\n",
            label(t),
            opt(med(t, "events_per_s"), &|e| format!("{e:.0}")),
            opt(med(t, "ring_records_per_mib"), &|r| format!("{r:.0}")),
            opt(t["drops"].get("max").and_then(Value::as_f64), &|d| {
                format!("{d:.0}")
            }),
            opt(med(t, "tracer_cpu_share"), &|c| {
                format!("{:.0}% of 1", c * 100.0)
            }),
            opt(med(t, "tracer_us_per_event"), &|u| format!("{u:.1}")),
            opt(med(t, "events_per_wakeup"), &|w| format!("{w:.1}")),
            opt(med(t, "attach_s"), &|a| format!("{a:.1}s")),
            opt(med(t, "ktls_bytes_per_served"), &|k| format!("{k:.3}")),
        ));
    }
    s.push_str(concat!(
        "\n  srv CPU: the load's server thread (kprobe handlers run there too); +tracer CPU: server\n",
        "  thread plus the tracer process, per GiB served; rec/MiB: ring-buffer records per MiB\n",
        "  served (top reads the totals the kernel adds up: 0); tracer CPU: the tracer's user+sys time\n",
        "  during the load as a share of one CPU; us/event: that time per event; ev/wake: events\n",
        "  per voluntary context switch of the tracer's threads (about one per wake-up); drops:\n",
        "  the largest count of any round (bpftrace counts in kernel maps: none to lose); attach:\n",
        "  tracer start to probes attached (bpftrace: its BEGIN, after compiling); kTLS/served:\n",
        "  plaintext the tracer saw enter kernel TLS per body byte the load served (~1.0).\n",
    ));
    if let Some(costs) = report["program_cost"].as_object().filter(|c| !c.is_empty()) {
        s.push_str("\nIn-kernel cost per program run, ns (BPF run-time statistics; trace --cost, one run each)\n");
        s.push_str(&format!(
            "  {:<22} {:>12} {:>12} {:>12} {:>12} {:>16}\n",
            "probe", "kprobe entry", "kretprobe", "fentry", "fexit", "fentry/kprobe"
        ));
        for (probe, c) in costs {
            let n = |v: &Value| opt(v.as_f64(), &|x| format!("{x:.0}"));
            let (fe, fx) = if c["fentry"]["via"] == "fentry" {
                (n(&c["fentry"]["entry_ns"]), n(&c["fentry"]["return_ns"]))
            } else {
                ("(kprobe)".to_string(), "-".to_string())
            };
            s.push_str(&format!(
                "  {:<22} {:>12} {:>12} {:>12} {:>12} {:>16}\n",
                probe,
                n(&c["kprobe"]["entry_ns"]),
                n(&c["kprobe"]["return_ns"]),
                fe,
                fx,
                opt(c["fentry_to_kprobe"].as_f64(), &|r| format!("{r:.2}")),
            ));
        }
    }
    if let Some(p) = report["problems"].as_array().filter(|p| !p.is_empty()) {
        s.push_str(&format!("\n{} problem(s):\n", p.len()));
        for x in p {
            s.push_str(&format!("  {}\n", x.as_str().unwrap_or("?")));
        }
    }
    s
}

/// target/ as cargo sees it (honours CARGO_TARGET_DIR and config).
fn target_dir() -> Result<PathBuf> {
    let out = cmd::stdout(
        cmd::cargo()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(cmd::workspace_root()),
    )?;
    let meta: Value = serde_json::from_str(&out).context("parsing `cargo metadata` output")?;
    let dir = meta
        .get("target_directory")
        .and_then(Value::as_str)
        .context("`cargo metadata` reported no target_directory")?;
    Ok(Path::new(dir).to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_json(bytes: u64, secs: f64, tput: f64, s_per_gib: f64) -> String {
        json!({
            "role": "both",
            "cpu": {"s_per_gib": s_per_gib * 2.0},
            "server": {
                "body_bytes": bytes, "seconds": secs, "throughput_bytes_per_sec": tput,
                "cpu": {"scope": "server-thread", "s_per_gib": s_per_gib},
            },
        })
        .to_string()
    }

    const MODES: [&str; 4] = [
        "ktls-sendfile",
        "ktls-write",
        "userspace-tls",
        "plain-sendfile",
    ];

    /// A console with every configuration in `runs` rounds; the baseline does 100 MB/s
    /// at 1 s/GiB, the others `factor` times that throughput.
    fn console(id: &str, runs: u32) -> String {
        let mut c = format!(
            "noise\n[   1.0] KT-BENCH {id} start kernel=6.12.1 cpus=2 runs={runs} seconds=6\n"
        );
        c.push_str(&format!("KT-BENCH {id} modes {} \n", MODES.join(" ")));
        c.push_str(&format!(
            "KT-BENCH {id} crypto aesni=yes gcm_aes_drivers=generic-gcm-aesni \n"
        ));
        let names = MODES
            .iter()
            .map(|m| (*m, None))
            .chain(CONFIGS.iter().map(|c| (c.name, Some(c.tracer))));
        for round in 1..=runs {
            for (name, tracer) in names.clone() {
                // Like guest.sh: the other paths and the extra tracers only in the first
                // rounds.
                let every = config(name).is_some_and(|c| c.every_round) || name == BASELINE;
                if !every && round > PATH_ROUNDS {
                    continue;
                }
                let factor = if name == BASELINE { 1.0 } else { 0.5 };
                match tracer {
                    Some(Tracer::Bpftrace) => c.push_str(&format!(
                        "KT-BENCH {id} tracer {name} {round} rc=0 alive=1 ticks=20 wakeups=30 attach_s=20.5 {}\n",
                        json!({"bpftrace": [
                            {"type": "map", "data": {"@calls_do_sendfile": {"1": 1000}}},
                            {"type": "map", "data": {"@calls_tls_sw_sendmsg": {"1": 5000}}},
                            {"type": "map", "data": {"@done_tls_sw_sendmsg": {"0": 1000, "1": 1u64 << 30}}},
                        ]})
                    )),
                    Some(Tracer::TopAll) => c.push_str(&format!(
                        "KT-BENCH {id} tracer {name} {round} rc=0 alive=1 ticks=150 attach_s=1.5 {{\"kernel\":\"6.12.1\",\"events\":6000,\"drops_total\":3,\"procs\":[]}}\n"
                    )),
                    Some(_) => c.push_str(&format!(
                        "KT-BENCH {id} tracer {name} {round} rc=0 alive=1 ticks=300 wakeups=600 attach_s=1.0 {{\"summary\":{{\"events\":6000,\"drops\":0}}}}\n"
                    )),
                    None => {}
                }
                c.push_str(&format!(
                    "KT-BENCH {id} load {name} {round} rc=0 wall_s=6.5 {}\n",
                    load_json(
                        1 << 30,
                        6.0,
                        100e6 * factor,
                        1.0 / factor * f64::from(round)
                    )
                ));
            }
        }
        // The cost runs: do_sendfile on a trampoline under fentry, tls_sw_sendmsg stays a
        // kprobe (the tls module).
        for (name, via) in [("cost-kprobe", "kprobe"), ("cost-fentry", "fentry")] {
            let ns = if via == "fentry" { 50.0 } else { 200.0 };
            let cost = json!({
                "do_sendfile": {"via": via, "entry": {"runs": 10, "ns": 10, "ns_per_run": ns}, "return": {"runs": 10, "ns": 10, "ns_per_run": ns}},
                "tls_sw_sendmsg": {"via": "kprobe", "entry": {"runs": 10, "ns": 10, "ns_per_run": 300.0}, "return": {"runs": 10, "ns": 10, "ns_per_run": 100.0}},
            });
            c.push_str(&format!(
                "KT-BENCH {id} tracer {name} 1 rc=0 alive=1 ticks=300 wakeups=600 attach_s=1.0 {}\n",
                json!({"summary": {"events": 6000, "drops": 0, "cost": cost}})
            ));
            c.push_str(&format!(
                "KT-BENCH {id} load {name} 1 rc=0 wall_s=6.5 {}\n",
                load_json(1 << 30, 6.0, 100e6, 1.0)
            ));
        }
        c.push_str(&format!("KT-BENCH {id} done uptime=99\n"));
        c
    }

    #[test]
    fn extra_tracers_run_in_the_first_rounds_only() {
        let r = parse(&console("abc", 5), "abc", 5);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        for c in CONFIGS {
            let rounds = (1..=5)
                .filter(|round| r.samples.contains_key(&(c.name.to_string(), *round)))
                .count() as u32;
            assert_eq!(rounds, c.rounds(5), "{}", c.name);
        }
        assert_eq!(config("trace-comm").map(|c| c.rounds(5)), Some(PATH_ROUNDS));
        assert_eq!(config("top-all").map(|c| c.rounds(5)), Some(5));
        let script = guest_script("abc", 6, 5);
        assert!(
            script.contains("EXTRAS=\"trace-comm:trace-comm trace-fentry:trace-fentry\""),
            "{script}"
        );
    }

    #[test]
    fn a_complete_run_parses_without_problems() {
        let r = parse(&console("abc", 3), "abc", 3);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.kernel.as_deref(), Some("6.12.1"));
        assert_eq!(
            r.crypto.as_deref(),
            Some("aesni=yes gcm_aes_drivers=generic-gcm-aesni")
        );
        assert_eq!(r.modes, MODES);
        let tracer_runs: u32 = CONFIGS.iter().map(|c| c.rounds(3)).sum();
        assert_eq!(
            r.samples.len() as u32,
            3 + (MODES.len() as u32 - 1) * PATH_ROUNDS + tracer_runs + COST_CONFIGS.len() as u32
        );
        let top = r.samples[&("top-all".to_string(), 2)]
            .tracer
            .clone()
            .unwrap();
        assert_eq!(
            (top.events, top.drops, top.ticks),
            (Some(6000), Some(3), 150)
        );
        assert_eq!(top.wakeups, None);
        let tr = r.samples[&("trace-all".to_string(), 1)]
            .tracer
            .clone()
            .unwrap();
        assert_eq!((tr.events, tr.drops, tr.alive), (Some(6000), Some(0), true));
        assert_eq!(tr.ktls_bytes, Some(0), "the summary has no kTLS probes");
        let bt = r.samples[&("bpftrace".to_string(), 3)]
            .tracer
            .clone()
            .unwrap();
        assert_eq!((bt.events, bt.drops), (Some(6000), None));
        assert_eq!(bt.ktls_bytes, Some((1 << 30) + 1000));
        assert_eq!(
            bt.probes.unwrap()["do_sendfile"]["in_sendfile"]["calls"],
            1000
        );
        assert_eq!(bt.attach_s, Some(20.5));
    }

    #[test]
    fn the_other_paths_run_only_in_the_first_rounds() {
        let r = parse(&console("abc", 5), "abc", 5);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(
            ratios(&r, "ktls-write", "throughput", 5).len() as u32,
            PATH_ROUNDS
        );
        assert_eq!(ratios(&r, "trace-all", "throughput", 5).len(), 5);
        let s = guest_script("id", 6, 5);
        assert!(s.contains("PATH_ROUNDS=2"), "{s}");
    }

    #[test]
    fn unreadable_bpftrace_output_is_a_problem() {
        let c = console("abc", 1).replace(
            "{\"bpftrace\":[{\"data\":{\"@calls_do_sendfile\":{\"1\"",
            "{\"bpftrace\":[{\"data\":{\"@calls_do_sendfile\":{\"one\"",
        );
        let r = parse(&c, "abc", 1);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0].starts_with("bpftrace round 1: tracer output: "),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn ratios_are_paired_per_round() {
        let r = parse(&console("abc", 3), "abc", 3);
        // CPU per GiB grows with the round on both sides: the paired ratio stays 2.
        assert_eq!(
            ratios(&r, "ktls-write", "server_cpu_per_gib", 3),
            [2.0, 2.0]
        );
        assert_eq!(ratios(&r, "trace-all", "throughput", 3), [0.5, 0.5, 0.5]);
        let s = r.samples[&("trace-all".to_string(), 1)].clone();
        assert_eq!(metric(&s, "events_per_s"), Some(1000.0));
        assert_eq!(metric(&s, "tracer_cpu_s"), Some(3.0));
        assert_eq!(metric(&s, "tracer_us_per_event"), Some(500.0));
        assert_eq!(metric(&s, "events_per_wakeup"), Some(10.0));
        // 2 s/GiB (server) + 3 s of tracer for 1 GiB.
        assert_eq!(metric(&s, "total_cpu_per_gib"), Some(5.0));
    }

    #[test]
    fn other_runs_and_missing_results_are_problems() {
        let c = console("old", 1);
        let r = parse(&c, "new", 1);
        assert!(r.samples.is_empty());
        assert!(r.problems.iter().any(|p| p.contains("no start line")));
        assert!(r.problems.iter().any(|p| p.contains("no done line")));

        let cut: String = c
            .lines()
            .filter(|l| !l.contains("load userspace-tls"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse(&cut, "old", 1);
        assert_eq!(r.problems, ["userspace-tls round 1: no result"]);

        let died = c.replace(
            "tracer trace-comm 1 rc=0 alive=1",
            "tracer trace-comm 1 rc=1 alive=0",
        );
        let r = parse(&died, "old", 1);
        assert_eq!(
            r.problems,
            ["trace-comm round 1: the tracer ended before the load did"]
        );
    }

    #[test]
    fn report_and_table() {
        let r = parse(&console("abc", 3), "abc", 3);
        let args = BenchArgs {
            kernel: KernelChoice::V6_12,
            seconds: 6,
            runs: 3,
        };
        let rep = report_json(Series::V6_12, &args, &r, Duration::from_secs(100));
        assert_eq!(rep["paths"][1]["config"], "ktls-write");
        assert_eq!(rep["paths"][1]["throughput_ratio"]["median"], 0.5);
        assert_eq!(rep["tracing"][1]["events_per_s"]["median"], 1000.0);
        let table = render_table(&rep);
        assert!(table.contains("ktls-write"), "{table}");
        assert!(table.contains("0.50 [0.50-0.50]"), "{table}");
        assert!(table.contains("top --once"), "{table}");
        assert!(table.contains("bpftrace script"), "{table}");
        assert_eq!(rep["tracing"][5]["config"], "bpftrace");
        assert_eq!(
            rep["tracing"][5]["ktls_bytes_per_served"]["median"],
            1.0 + 1000.0 / f64::from(1u32 << 30)
        );
        assert!(!table.contains("problem"), "{table}");
        let cost = &rep["program_cost"];
        assert_eq!(cost["do_sendfile"]["kprobe"]["entry_ns"], 200.0);
        assert_eq!(cost["do_sendfile"]["fentry"]["return_ns"], 50.0);
        assert_eq!(cost["do_sendfile"]["fentry_to_kprobe"], 0.25);
        assert_eq!(cost["tls_sw_sendmsg"]["fentry_to_kprobe"], Value::Null);
        assert!(table.contains("In-kernel cost per program run"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.contains("tls_sw_sendmsg") && l.contains("(kprobe)")),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.contains("do_sendfile") && l.trim_end().ends_with("0.25")),
            "{table}"
        );
    }

    #[test]
    fn a_cost_run_without_cost_is_a_problem() {
        let c = console("abc", 1).replace("\"cost\":", "\"nocost\":");
        let r = parse(&c, "abc", 1);
        assert_eq!(
            r.problems,
            [
                "cost-kprobe: no cost in the trace summary",
                "cost-fentry: no cost in the trace summary"
            ]
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn script_runs_every_configuration_and_marks_lines() {
        let s = guest_script("id1", 6, 3);
        assert!(s.contains("ID=id1") && s.contains("D=6") && s.contains("RUNS=3"));
        assert!(
            s.split('@')
                .skip(1)
                .all(|rest| !rest.starts_with(|c: char| c.is_ascii_uppercase())),
            "every placeholder filled: {s}"
        );
        for c in CONFIGS.iter().chain(&COST_CONFIGS) {
            assert!(
                s.contains(&format!("{}:{}", c.name, c.tracer.kind())),
                "{}",
                c.name
            );
        }
        assert!(s.contains("BASELINE=ktls-sendfile"));
        assert!(
            s.contains("load --list-modes"),
            "the modes come from the binary"
        );
        assert!(s.contains("trace --json --comm ktls-load-srv"));
        assert!(s.contains("top --once --json --interval 60"));
        assert!(s.contains("bpftrace -f json \"$BT_PROGRAM\""));
        assert!(s.contains(&format!("ready=\"{}\"", bpftrace::READY)));
        // Both eras' programs, each a complete quoted heredoc.
        assert!(s.contains(&format!(
            "<<'BT_EOF'\n{}\nBT_EOF\n",
            bpftrace::program(true).trim_end()
        )));
        assert!(s.contains(&format!(
            "<<'BT_EOF'\n{}\nBT_EOF\n",
            bpftrace::program(false).trim_end()
        )));
    }
}
