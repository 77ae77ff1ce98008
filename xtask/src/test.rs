//! `cargo xtask test`: everything CI checks, in one command, with one table at the end.
//!
//! Steps keep going after a failure where they are independent (a formatting slip must
//! not hide a failing kernel test); steps that need the build are skipped if it failed.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    build, cmd, dist, setup,
    vm::{self, GuestRun, KernelChoice, VmOptions},
};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip the QEMU guests (fmt, clippy and host tests only).
    #[arg(long, conflicts_with = "only_vm")]
    pub no_vm: bool,

    /// Only the QEMU guests (skip fmt, clippy and host tests).
    #[arg(long)]
    pub only_vm: bool,

    /// Which kernel series to boot (5.10, 6.1, 6.12, latest, all).
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,

    #[command(flatten)]
    pub vm: VmOptions,
}

/// What the host's `cargo test` did, from libtest's lines: `test NAME ... ok`, `FAILED`,
/// `ignored` (the tests that need kprobes or kernel TLS: they run in the guests), and the
/// tests' own `KT-SKIP NAME: why` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct HostCounts {
    passed: usize,
    failed: usize,
    ignored: usize,
    skipped: usize,
}

impl HostCounts {
    fn parse(text: &str) -> HostCounts {
        let mut c = HostCounts::default();
        for line in text.lines() {
            if line.starts_with("KT-SKIP ") {
                c.skipped += 1;
            }
            let Some(rest) = line.strip_prefix("test ") else {
                continue;
            };
            match rest.rsplit_once(" ... ").map(|(_, v)| v.trim()) {
                Some("ok") => c.passed += 1,
                Some("FAILED") => c.failed += 1,
                Some(v) if v.starts_with("ignored") => c.ignored += 1,
                _ => {}
            }
        }
        c
    }
}

impl std::fmt::Display for HostCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} ignored here (they run in the guests), {} skipped",
            self.passed, self.failed, self.ignored, self.skipped
        )
    }
}

#[derive(Debug)]
struct Step {
    name: String,
    /// None: skipped.
    ok: Option<bool>,
    time: Duration,
    note: String,
}

#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    /// Runs one step, recording its result; returns whether it passed.
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<String>) -> bool {
        eprintln!("\n==> {name}");
        let started = Instant::now();
        let result = f();
        self.record(name, result, started.elapsed())
    }

    /// Records a step that ran elsewhere (the guests, side by side); returns whether it
    /// passed.
    fn record(&mut self, name: &str, result: Result<String>, time: Duration) -> bool {
        let (ok, note) = match result {
            Ok(note) => (true, note),
            Err(e) => {
                eprintln!("xtask: {name}: {e:#}");
                (false, format!("{e:#}"))
            }
        };
        self.0.push(Step {
            name: name.to_string(),
            ok: Some(ok),
            time,
            note,
        });
        ok
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.0.push(Step {
            name: name.to_string(),
            ok: None,
            time: Duration::ZERO,
            note: why.to_string(),
        });
    }

    fn print(&self, total: Duration) {
        eprintln!("\n{:<12} {:<8} {:>8}  notes", "step", "result", "time");
        for s in &self.0 {
            let result = match s.ok {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "skipped",
            };
            let note: String = s.note.chars().take(110).collect();
            eprintln!(
                "{:<12} {:<8} {:>8}  {note}",
                s.name,
                result,
                cmd::fmt_duration(s.time)
            );
        }
        eprintln!("{:<12} {:<8} {:>8}", "total", "", cmd::fmt_duration(total));
    }

    fn failures(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|s| s.ok == Some(false))
            .map(|s| s.name.as_str())
            .collect()
    }
}

pub fn test_cmd(args: &TestArgs) -> Result<()> {
    let started = Instant::now();
    let root = cmd::workspace_root();
    let mut steps = Steps::default();
    let mut runs: Vec<GuestRun> = Vec::new();

    let ready = steps.run("setup", || setup::setup(false).map(|()| String::new()));
    let host = !args.only_vm;
    if ready && host {
        steps.run("fmt", || {
            cmd::run(
                cmd::cargo()
                    .args(["fmt", "--all", "--check"])
                    .current_dir(&root),
            )
            .map(|()| String::new())
        });
        steps.run("clippy", || {
            cmd::run(
                cmd::cargo()
                    .args(["clippy", "--all-targets", "--", "-D", "warnings"])
                    .current_dir(&root),
            )?;
            // The code of the static build (no workload generator: `cargo xtask dist`)
            // must be clean too. On the host target: the musl one differs only in libc's
            // types, which the dist build compiles, and its tests would need a musl C
            // compiler (criterion's alloca).
            cmd::run(
                cmd::cargo()
                    .args(["clippy", "-p", "ktls-trace", "--no-default-features"])
                    .args(["--all-targets", "--", "-D", "warnings"])
                    .current_dir(&root),
            )
            .map(|()| String::new())
        });
        steps.run("prom rules", || prometheus_rules(&root));
    }
    // One build for both, in the `ci` profile (optimized, assertions on; Cargo.toml says
    // why): the host tests find the binaries next to their executables
    // (target/ci/ktls-trace), which `cargo test` alone does not build.
    let mut artifacts = None;
    if ready {
        steps.run("build", || {
            let a = build::build(build::Profile::Ci)?;
            let note = format!("{} test executables", a.tests.len());
            artifacts = Some(a);
            Ok(note)
        });
    } else {
        steps.skip("build", "setup failed");
    }
    // The static binary, for tests/tests/dist.rs on the host and in every guest. Without
    // it those tests fail in the guests (and the run fails here already).
    if let Some(a) = artifacts.as_mut() {
        steps.run("dist", || {
            let d = dist::build()?;
            let size = std::fs::metadata(&d.binary).map(|m| m.len()).unwrap_or(0);
            let note = format!("{} ({:.1} MB)", d.binary.display(), size as f64 / 1e6);
            a.dist = Some(d.binary);
            Ok(note)
        });
    } else {
        steps.skip("dist", "no build");
    }
    if host {
        match &artifacts {
            Some(_) => {
                steps.run("host tests", || {
                    if !cmd::is_root() {
                        bail!("the integration tests load eBPF programs: run as root");
                    }
                    let mut cargo = cmd::cargo();
                    cargo
                        .args(["test", "--workspace", "--exclude", "ktls-trace-ebpf"])
                        .args(build::Profile::Ci.cargo_args())
                        .current_dir(&root);
                    if let Some(d) = artifacts.as_ref().and_then(|a| a.dist.as_ref()) {
                        // Named, so that tests/tests/dist.rs fails instead of skipping
                        // if it is not there.
                        cargo.env("KTLS_TRACE_DIST_BIN", d);
                    }
                    let (ok, text) = cmd::run_teed(&mut cargo)?;
                    let counts = HostCounts::parse(&text);
                    if !ok {
                        bail!("{counts}");
                    }
                    Ok(counts.to_string())
                });
            }
            None => steps.skip("host tests", "no build"),
        }
    }
    if !args.no_vm {
        let series = args.kernel.series();
        match &artifacts {
            Some(a) => {
                let jobs = args.vm.jobs();
                eprintln!("\n==> vm: {} guests, {jobs} at a time", series.len());
                for o in vm::run_guests(&series, a, &args.vm, jobs) {
                    let name = format!("vm {}", o.series.label());
                    let result = o.result.and_then(|run| {
                        // Counts first: the table cuts long notes.
                        let note = format!("{}; {}; {}", run.counts(), run.package, run.times());
                        let passed = run.passed();
                        runs.push(run);
                        if passed { Ok(note) } else { bail!("{note}") }
                    });
                    steps.record(&name, result, o.time);
                }
            }
            None => {
                for s in series {
                    steps.skip(&format!("vm {}", s.label()), "no build");
                }
            }
        }
    }

    if !runs.is_empty() {
        vm::print_summary(&runs);
    }
    steps.print(started.elapsed());
    if !runs.is_empty() {
        eprintln!("{}", vm::totals_line(&runs));
    }
    let failed = steps.failures();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    if args.no_vm {
        // Not "all": the tests that need kprobes or kernel TLS are ignored on this host and
        // only run in the guests.
        eprintln!(
            "host checks passed; the guest tests (kprobes, kernel TLS) did not run (--no-vm)"
        );
    } else {
        eprintln!("all checks passed");
    }
    Ok(())
}

/// The rules file a fleet operator drops into Prometheus, and its promtool unit tests,
/// in docs/prometheus/ (relative paths: the test file names the rules file beside it).
const RULES: &str = "ktls-trace.rules.yml";
const RULES_TEST: &str = "ktls-trace.rules.test.yml";

/// docs/prometheus/'s rules through the promtool of Debian's prometheus package (unpacked
/// under target/vm/tools/, the one the kTLS guests carry): `check rules` lints them and
/// `test rules` runs their unit tests, so a rule that stops parsing, firing or staying
/// quiet fails CI here instead of on an operator's Prometheus.
fn prometheus_rules(root: &Path) -> Result<String> {
    let prometheus = vm::prepare_prometheus()?;
    let promtool = prometheus.root.join(vm::PROMTOOL);
    let dir = root.join("docs/prometheus");
    cmd::run(
        Command::new(&promtool)
            .args(["check", "rules", RULES])
            .current_dir(&dir),
    )?;
    let (ok, text) = cmd::run_teed(
        Command::new(&promtool)
            .args(["test", "rules", RULES_TEST])
            .current_dir(&dir),
    )?;
    if !ok {
        bail!("promtool test rules {RULES_TEST} failed");
    }
    // promtool 2.42 prints one SUCCESS per test file, whatever its number of tests.
    if !text.contains("SUCCESS") {
        bail!("promtool test rules {RULES_TEST} did not say SUCCESS");
    }
    Ok(format!("promtool {}", prometheus.version))
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::HostCounts;

    #[test]
    fn host_counts_come_from_libtest_lines() {
        let text = "running 3 tests\n\
test a ... ok\n\
test b ... ignored, needs kprobes: runs in the QEMU guests\n\
test c ... FAILED\n\
test d ... ok\n\
KT-SKIP d: no curl here\n\
test result: FAILED. 2 passed; 1 failed; 1 ignored\n";
        let c = HostCounts::parse(text);
        assert_eq!(
            c,
            HostCounts {
                passed: 2,
                failed: 1,
                ignored: 1,
                skipped: 1
            }
        );
        assert_eq!(
            c.to_string(),
            "2 passed, 1 failed, 1 ignored here (they run in the guests), 1 skipped"
        );
    }

    /// Every `` `file::name` `` in docs/reliability.md's tables is a test that exists:
    /// `file` is tests/tests/<file>.rs (an integration test), and a longer path
    /// (`module::tests::name`) is a unit test somewhere under ktls-trace/src.
    #[test]
    fn reliability_doc_names_real_tests() {
        let root = crate::cmd::workspace_root();
        let doc = fs::read_to_string(root.join("docs/reliability.md")).expect("reliability.md");
        let mut sources = String::new();
        collect_rs(&root.join("ktls-trace/src"), &mut sources);
        let mut named = 0;
        for cell in doc.split('`').skip(1).step_by(2) {
            let Some((file, name)) = cell.rsplit_once("::") else {
                continue;
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            let integration = root.join(format!("tests/tests/{file}.rs"));
            let text = if !file.contains("::") && integration.exists() {
                fs::read_to_string(&integration).expect("test file")
            } else {
                sources.clone()
            };
            assert!(
                text.contains(&format!("fn {name}(")),
                "docs/reliability.md names `{cell}`, which is no test"
            );
            named += 1;
        }
        assert!(named >= 30, "only {named} tests named");
    }

    /// Every rule of docs/prometheus/ktls-trace.rules.yml is explained in the README beside
    /// it, and every alert has unit tests (promtool passes a rules file whose alerts are
    /// never tested).
    #[test]
    fn prometheus_rules_are_documented_and_tested() {
        let dir = crate::cmd::workspace_root().join("docs/prometheus");
        let read = |name: &str| fs::read_to_string(dir.join(name)).expect(name);
        let rules = read(super::RULES);
        let readme = read("README.md");
        let tests = read(super::RULES_TEST);
        let mut alerts = 0;
        for line in rules.lines().map(str::trim) {
            let (kind, name) = match line.strip_prefix("- record: ") {
                Some(n) => ("record", n),
                None => match line.strip_prefix("- alert: ") {
                    Some(n) => ("alert", n),
                    None => continue,
                },
            };
            assert!(
                readme.contains(&format!("`{name}`")),
                "docs/prometheus/README.md does not explain {name}"
            );
            if kind == "alert" {
                alerts += 1;
                assert!(
                    tests.contains(&format!("alertname: {name}\n")),
                    "no alert_rule_test for {name}"
                );
            }
        }
        assert!(alerts >= 5, "only {alerts} alerts found");
    }

    fn collect_rs(dir: &Path, out: &mut String) {
        for e in fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                collect_rs(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&fs::read_to_string(&p).expect("source"));
            }
        }
    }
}
