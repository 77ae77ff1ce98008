//! `cargo xtask vm-test` and `cargo xtask vm-shell`: the project's tests on real kernels
//! with kprobes (Debian's 5.10, 6.1, 6.12 and newest cloud kernels; all but 5.10 with
//! kernel TLS) under QEMU/TCG, because the build machines' own kernel has neither kprobes
//! nor kernel TLS. docs/testing.md explains it.
//!
//! - series.rs     the kernel series: labels, package patterns, suites, kernel TLS or not
//! - apt.rs        the project's own apt state (target/vm/apt/) on the host's mirrors
//! - kernel.rs     resolve / download / unpack / depmod, cached under target/vm/cache/
//! - initramfs.rs  busybox + modules + binaries + tests + generated /init
//! - tools.rs      Debian tools some guests carry (bpftrace, prometheus), under target/vm/tools/
//! - qemu.rs       boot, console capture, deadline
//! - report.rs     console -> per-test results

mod apt;
mod initramfs;
mod kernel;
mod qemu;
mod report;
mod series;
mod tools;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

pub use initramfs::{Plan, TestRun};
pub use qemu::Vcpus;
use report::{GuestReport, Outcome};
pub use series::{KernelChoice, Series};
pub use tools::Unpacked;

use crate::{
    build::{self, Artifacts},
    cmd, dist, setup,
};

/// Options shared by `vm-test` and `test`.
#[derive(Debug, Clone, Args)]
pub struct VmOptions {
    /// Seconds one guest may take (boot + every test) before qemu is killed. The newest
    /// kernel takes about 21 minutes with its 10-minute soak (ci profile).
    #[arg(long, value_name = "SECS", default_value_t = 2700)]
    pub timeout: u64,

    /// Seconds one test executable may run inside the guest before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = EXE_TIMEOUT_SECS)]
    pub exe_timeout: u64,

    /// Only run test executables whose label (`package/target (kind)`) contains this.
    #[arg(long, value_name = "TEXT")]
    pub exe: Option<String>,

    /// Only run the tests whose name contains this (libtest's filter; letters, digits,
    /// `_` and `::`); repeat for several. Executables with no such test run nothing.
    #[arg(long, value_name = "NAME", value_parser = test_filter)]
    pub test: Vec<String>,

    /// Soak for this many seconds on every kernel (default: 600 on the newest, 120 on the
    /// others; tests/tests/soak.rs).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(10..=86400))]
    pub soak_secs: Option<u64>,

    /// Print the whole guest console live, not only markers and test verdicts.
    #[arg(short, long)]
    pub verbose: bool,

    /// Guests booted at the same time (default: one per core, at most 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=8))]
    pub jobs: Option<u16>,
}

/// The filter goes into the guest's shell command line: only characters that need no
/// quoting there.
fn test_filter(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        Ok(s.to_string())
    } else {
        Err("a test name: letters, digits, `_` and `::` only".into())
    }
}

impl VmOptions {
    pub fn jobs(&self) -> usize {
        self.jobs.map_or_else(default_jobs, usize::from)
    }
}

#[derive(Debug, Args)]
pub struct VmTestArgs {
    /// Which kernel series to boot.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,

    /// The cargo profile to build the binaries and tests with.
    #[arg(long, value_enum, default_value = "ci")]
    pub profile: build::Profile,

    #[command(flatten)]
    pub vm: VmOptions,
}

#[derive(Debug, Args)]
pub struct VmShellArgs {
    /// Which kernel series to boot.
    #[arg(long, value_enum, default_value = "6.12")]
    pub kernel: Series,

    /// The cargo profile to build the binaries and tests with.
    #[arg(long, value_enum, default_value = "ci")]
    pub profile: build::Profile,
}

/// The outcome of one guest run, for summaries.
#[derive(Debug)]
pub struct GuestRun {
    pub series: Series,
    pub package: String,
    pub report: GuestReport,
    /// qemu start -> KT-BOOTED (host clock).
    pub boot: Option<Duration>,
    /// KT-BOOTED -> KT-DONE: the test plan itself.
    pub tests: Option<Duration>,
    pub total: Duration,
    pub log: PathBuf,
    /// Console tail for failures that need context.
    pub tail: Vec<String>,
}

impl GuestRun {
    pub fn passed(&self) -> bool {
        self.report.passed()
    }

    /// `150 passed, 0 failed, 6 skipped` (`, 2 ignored` only when there are: the guests
    /// run with --include-ignored).
    pub fn counts(&self) -> String {
        let r = &self.report;
        let mut s = format!(
            "{} passed, {} failed, {} skipped",
            r.count(Outcome::Passed),
            r.count(Outcome::Failed),
            r.count(Outcome::Skipped),
        );
        let ignored = r.count(Outcome::Ignored);
        if ignored > 0 {
            s.push_str(&format!(", {ignored} ignored"));
        }
        s
    }

    /// `boot 4.1s, tests 4m28s, total 4m32s`
    pub fn times(&self) -> String {
        let time = |d: Option<Duration>| d.map(cmd::fmt_duration).unwrap_or_else(|| "-".into());
        format!(
            "boot {}, tests {}, total {}",
            time(self.boot),
            time(self.tests),
            cmd::fmt_duration(self.total),
        )
    }

    /// `150 passed, 0 failed, 6 skipped in 12 executables; boot 4.1s, tests 4m28s, total 4m32s`
    pub fn summary(&self) -> String {
        format!(
            "{} in {} executables; {}",
            self.counts(),
            self.report.exes.len(),
            self.times()
        )
    }
}

pub fn vm_test_cmd(args: &VmTestArgs) -> Result<()> {
    setup::setup(false)?;
    let mut artifacts = build::build(args.profile)?;
    artifacts.dist = Some(dist::build()?.binary);
    let mut runs = Vec::new();
    for o in run_guests(&args.kernel.series(), &artifacts, &args.vm, args.vm.jobs()) {
        runs.push(
            o.result
                .with_context(|| format!("vm {}", o.series.label()))?,
        );
    }
    print_summary(&runs);
    eprintln!("{}", totals_line(&runs));
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.series.label())
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

pub fn vm_shell_cmd(args: &VmShellArgs) -> Result<()> {
    setup::setup(false)?;
    let mut artifacts = build::build(args.profile)?;
    // The same image as the tests', the shipped binary included.
    artifacts.dist = Some(dist::build()?.binary);
    // The same tools as the test image: the shell is where a failing test is debugged.
    let tools = test_tools(args.kernel)?;
    let (kernel, initrd, _) = image(
        args.kernel,
        &artifacts,
        &artifacts.tests,
        Plan::Shell,
        EXE_TIMEOUT_SECS,
        "shell",
        &tools.iter().collect::<Vec<_>>(),
    )?;
    qemu::run_interactive(qemu::command(&kernel.vmlinuz, &initrd, true, Vcpus::Serial))
}

/// One guest's result in [`run_guests`], with the time its boot took.
pub struct GuestOutcome {
    pub series: Series,
    pub result: Result<GuestRun>,
    pub time: Duration,
}

/// Boots every series' kernel with every test executable, `jobs` guests at a time, and
/// parses the results, in the order of `series`. A guest's error is a harness problem
/// (no kernel, no qemu); test failures are in its report.
///
/// Kernels and images are prepared one after another first: the series share one apt
/// state (and its lock), and a download or unpack error should stop nothing else. Then
/// the boots run side by side. Each guest's TCG runs on one host thread
/// ([`Vcpus::Serial`]), so on a two-core machine two guests take the two cores without
/// slowing each other down; the newest kernels start first because they take longest.
pub fn run_guests(
    series: &[Series],
    artifacts: &Artifacts,
    opts: &VmOptions,
    jobs: usize,
) -> Vec<GuestOutcome> {
    let mut ready = Vec::new();
    let mut outcomes: Vec<Option<GuestOutcome>> = series.iter().map(|_| None).collect();
    for (i, s) in series.iter().enumerate() {
        let started = std::time::Instant::now();
        match prepare_tests(*s, artifacts, opts) {
            Ok(p) => ready.push((i, p)),
            Err(e) => {
                outcomes[i] = Some(GuestOutcome {
                    series: *s,
                    result: Err(e),
                    time: started.elapsed(),
                })
            }
        }
    }
    // Newest first (Series orders by age).
    ready.sort_by_key(|(_, p)| std::cmp::Reverse(p.series));
    let queue = std::sync::Mutex::new(ready);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    // The guard is a temporary of this statement: released before the boot.
                    let next = queue.lock().ok().and_then(|mut q| {
                        if q.is_empty() {
                            None
                        } else {
                            Some(q.remove(0))
                        }
                    });
                    let Some((i, p)) = next else { break };
                    let series = p.series;
                    let started = std::time::Instant::now();
                    let result = boot_tests(p, opts);
                    let outcome = GuestOutcome {
                        series,
                        result,
                        time: started.elapsed(),
                    };
                    if let Ok(mut d) = done.lock() {
                        d.push((i, outcome));
                    }
                }
            });
        }
    });
    for (i, o) in done.into_inner().unwrap_or_default() {
        outcomes[i] = Some(o);
    }
    outcomes.into_iter().flatten().collect()
}

/// How many guests run at once unless `--jobs` says: one per core, at most two (the
/// machines this runs on have two; more guests than cores only slows each one down).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 2)
}

/// A test guest ready to boot: kernel resolved, initramfs built.
struct Prepared {
    series: Series,
    kernel: kernel::Kernel,
    initrd: PathBuf,
    work: PathBuf,
    /// Test executables in plan order, and their cargo labels by file name.
    plan: Vec<String>,
    names: std::collections::BTreeMap<String, String>,
}

fn prepare_tests(series: Series, artifacts: &Artifacts, opts: &VmOptions) -> Result<Prepared> {
    let tests: Vec<_> = artifacts
        .tests
        .iter()
        .filter(|t| {
            opts.exe
                .as_ref()
                .is_none_or(|f| t.label.contains(f.as_str()))
        })
        .cloned()
        .collect();
    if tests.is_empty() {
        bail!("no test executables to run in the guest");
    }
    let tools = test_tools(series)?;
    let (kernel, initrd, work) = image(
        series,
        artifacts,
        &tests,
        Plan::Tests(TestRun {
            filters: opts.test.clone(),
            soak_secs: opts.soak_secs,
        }),
        opts.exe_timeout,
        "test",
        &tools.iter().collect::<Vec<_>>(),
    )?;
    Ok(Prepared {
        series,
        kernel,
        initrd,
        work,
        plan: tests.iter().map(|t| t.file_name()).collect(),
        names: tests
            .iter()
            .map(|t| (t.file_name(), t.label.clone()))
            .collect(),
    })
}

fn boot_tests(p: Prepared, opts: &VmOptions) -> Result<GuestRun> {
    let label = p.series.label();
    let Prepared {
        series,
        kernel,
        initrd,
        work,
        plan,
        names,
    } = p;
    let size = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "vm {label}: booting {} with {} test executables (initramfs {} MB)",
        kernel.package,
        plan.len(),
        size / 1_000_000
    );
    let log = work.join("console.log");
    let verbose = opts.verbose;
    let captured = qemu::run_captured(
        qemu::command(&kernel.vmlinuz, &initrd, false, Vcpus::Serial),
        &log,
        Duration::from_secs(opts.timeout),
        |at, line| {
            if verbose || is_progress_line(line) {
                let shown = match line.split_once("KT-BEGIN ").or(line.split_once("KT-END ")) {
                    Some(_) => label_markers(line, &names),
                    None => line.to_string(),
                };
                eprintln!("[{label} {:>6}] {shown}", cmd::fmt_duration(at));
            }
        },
    )?;
    let marker_time = |m: &str| {
        captured
            .lines
            .iter()
            .find(|(_, l)| l.contains(m))
            .map(|(at, _)| *at)
    };
    let boot = marker_time("KT-BOOTED");
    let tests_time = boot
        .zip(marker_time("KT-DONE"))
        .map(|(b, d)| d.saturating_sub(b));
    let lines: Vec<&str> = captured.lines.iter().map(|(_, l)| l.as_str()).collect();
    let mut report = report::parse(&lines, &plan, captured.timed_out);
    note_qemu_failure(&mut report, &captured);
    // Show the cargo labels instead of hashed file names from here on.
    for e in &mut report.exes {
        if let Some(l) = names.get(&e.exe) {
            e.exe = l.clone();
        }
    }
    let unexpected: Vec<String> = report
        .exes
        .iter()
        .flat_map(|e| {
            e.tests
                .iter()
                .filter(|t| t.outcome == Outcome::Skipped)
                .map(move |t| (e, t))
        })
        .filter_map(|(e, t)| {
            let why = t.details.first().map(String::as_str).unwrap_or("");
            (!series.allows_skip(why)).then(|| {
                format!(
                    "{} :: {} skipped, but the {label} guest should have what it needs: {why}",
                    e.exe, t.name
                )
            })
        })
        .collect();
    report.problems.extend(unexpected);
    let tail = lines
        .iter()
        .rev()
        .take(40)
        .rev()
        .map(|l| l.to_string())
        .collect();
    Ok(GuestRun {
        series,
        package: kernel.package,
        report,
        boot,
        tests: tests_time,
        total: captured.elapsed,
        log,
        tail,
    })
}

/// Seconds one test executable may run in the guest unless `--exe-timeout` says otherwise:
/// the longest is the soak (10 minutes on the newest kernel, tests/tests/soak.rs).
const EXE_TIMEOUT_SECS: u64 = 900;

/// Prepares the kernel and `<work>/initramfs-<name>.cpio` with the binaries, `tests` and
/// `plan`: the one image builder of the test run, the shell and the scripts. Returns the
/// kernel, the initramfs and the work directory.
fn image(
    series: Series,
    artifacts: &Artifacts,
    tests: &[build::TestExe],
    plan: Plan,
    exe_timeout_secs: u64,
    name: &str,
    unpacked: &[&Unpacked],
) -> Result<(kernel::Kernel, std::path::PathBuf, std::path::PathBuf)> {
    let kernel = kernel::prepare(series, &target_dir()?.join("vm"))?;
    let work = work_dir(series)?;
    let initrd = initramfs::build(
        &initramfs::Contents {
            kernel: &kernel,
            ktls_trace: &artifacts.ktls_trace,
            ktls_workload: &artifacts.ktls_workload,
            dist: artifacts.dist.as_deref(),
            tests,
            plan,
            exe_timeout_secs,
            unpacked,
        },
        &work,
        name,
    )?;
    Ok((kernel, initrd, work))
}

/// [`image`] with the binaries only (no tests) and `plan`, for the demo and the bench
/// (which adds `unpacked` tools).
fn script_image(
    series: Series,
    artifacts: &Artifacts,
    plan: Plan,
    name: &str,
    unpacked: Option<&Unpacked>,
) -> Result<(kernel::Kernel, std::path::PathBuf, std::path::PathBuf)> {
    let image = image(
        series,
        artifacts,
        &[],
        plan,
        EXE_TIMEOUT_SECS,
        name,
        unpacked.as_slice(),
    )?;
    eprintln!(
        "vm {}: booting {} (TCG emulation: give it a few seconds)",
        series.label(),
        image.0.package
    );
    Ok(image)
}

/// Boots one kernel with the binaries (no tests) and runs `script` as the plan, showing
/// the whole console live (the demo without a terminal, the bench). Returns the console
/// lines.
pub fn run_script(
    series: Series,
    artifacts: &Artifacts,
    script: &str,
    timeout: Duration,
    vcpus: Vcpus,
) -> Result<Vec<String>> {
    run_script_with(series, artifacts, script, timeout, vcpus, None)
}

/// [`run_script`] with tools unpacked from Debian packages in the image (the bench's
/// bpftrace, see [`prepare_tool`]).
pub fn run_script_with(
    series: Series,
    artifacts: &Artifacts,
    script: &str,
    timeout: Duration,
    vcpus: Vcpus,
    unpacked: Option<&Unpacked>,
) -> Result<Vec<String>> {
    let label = series.label();
    let (kernel, initrd, work) = script_image(
        series,
        artifacts,
        Plan::Script(script.to_string()),
        "demo",
        unpacked,
    )?;
    let log = work.join("console-demo.log");
    let captured = qemu::run_captured(
        qemu::command(&kernel.vmlinuz, &initrd, false, vcpus),
        &log,
        timeout,
        |_, line| println!("[{label}] {line}"),
    )?;
    let lines: Vec<&str> = captured.lines.iter().map(|(_, l)| l.as_str()).collect();
    let mut report = report::parse(&lines, &[], captured.timed_out);
    note_qemu_failure(&mut report, &captured);
    if !report.problems.is_empty() {
        bail!(
            "the {label} demo guest failed: {} (console: {})",
            report.problems.join("; "),
            log.display()
        );
    }
    Ok(lines.into_iter().map(String::from).collect())
}

/// `script` in a guest of every series of `kernels`, one after another, with a release
/// build of the binaries (setup first): the plan of the tasks that ask each kernel
/// something (`matrix`, `record`). `each` gets the series and the guest's console.
pub fn script_on_each(
    kernels: KernelChoice,
    script: &str,
    timeout: Duration,
    mut each: impl FnMut(Series, &[String]) -> Result<()>,
) -> Result<()> {
    setup::setup(false)?;
    let artifacts = build::build(build::Profile::Release)?;
    for series in kernels.series() {
        let console = run_script(series, &artifacts, script, timeout, Vcpus::Serial)
            .with_context(|| format!("the {} guest", series.label()))?;
        each(series, &console)?;
    }
    Ok(())
}

/// Boots one kernel and runs `script` with the serial console as the guest's terminal,
/// attached to this terminal (the demo's `top`). Ctrl-A X leaves qemu.
pub fn run_script_interactive(series: Series, artifacts: &Artifacts, script: &str) -> Result<()> {
    let (kernel, initrd, _) = script_image(
        series,
        artifacts,
        Plan::Interactive(script.to_string()),
        "demo-tty",
        None,
    )?;
    qemu::run_interactive(qemu::command(&kernel.vmlinuz, &initrd, true, Vcpus::Serial))
}

/// `package` from the host's Debian release, with the libraries the host lacks, unpacked
/// under target/vm/tools/ for a guest image (vm/tools.rs); nothing is installed on the host.
pub fn prepare_tool(package: &str, executables: &[&str]) -> Result<Unpacked> {
    tools::prepare(&target_dir()?.join("vm"), package, executables)
}

/// Debian's Prometheus server and promtool from the host's release, unpacked under
/// target/vm/tools/prometheus/: the kTLS test guests scrape `export` with it
/// (tests/tests/export.rs), and `cargo xtask test` runs its promtool on the host to test
/// docs/prometheus/'s rules. Both are Go programs that need only glibc, so none of the
/// package's dependencies (its web UI's JavaScript) is fetched. Bookworm's `prometheus`
/// carries promtool; later releases ship it as a package of its own, fetched along.
pub fn prepare_prometheus() -> Result<Unpacked> {
    tools::prepare_with(
        &target_dir()?.join("vm"),
        "prometheus",
        &[PROMETHEUS, PROMTOOL],
        tools::Deps::Only(&["promtool"]),
    )
    .context("preparing Debian's prometheus package (for the kTLS guests and the rules)")
}

/// Paths inside the prometheus tree, and in the guests.
pub const PROMETHEUS: &str = "usr/bin/prometheus";
pub const PROMTOOL: &str = "usr/bin/promtool";

/// The tools a test image carries besides the host's: Prometheus on the kernels with
/// kernel TLS, where the export test runs; 5.10's guest skips that test and would only
/// carry its ~100 MB around.
fn test_tools(series: Series) -> Result<Vec<Unpacked>> {
    if series.has_ktls() {
        Ok(vec![prepare_prometheus()?])
    } else {
        Ok(Vec::new())
    }
}

/// qemu itself failing (bad option, unreadable kernel) is a harness failure; after a
/// guest power-off or a panic with -no-reboot it exits 0.
fn note_qemu_failure(report: &mut GuestReport, captured: &qemu::Captured) {
    if let Some(status) = captured.status
        && !status.success()
        && !captured.timed_out
    {
        report.problems.push(format!("qemu exited with {status}"));
    }
}

/// Lines worth showing live without --verbose: markers, verdicts, kernel trouble.
fn is_progress_line(line: &str) -> bool {
    line.starts_with("KT-")
        || line.starts_with("test ")
        || line.starts_with("qemu: ")
        || ["Kernel panic", "Oops:", "BUG: ", "KT-WARN"]
            .iter()
            .any(|w| line.contains(w))
}

/// `KT-BEGIN trace-38ac...` -> `KT-BEGIN ktls-trace-tests/trace (test)`.
fn label_markers(line: &str, names: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = line.to_string();
    for (file, label) in names {
        if out.contains(file.as_str()) {
            out = out.replace(file.as_str(), label);
        }
    }
    out
}

/// Per-kernel results, every skip with its reason, every failure with its details, and
/// the matrix as a table.
pub fn print_summary(runs: &[GuestRun]) {
    eprintln!();
    for run in runs {
        let verdict = if run.passed() { "PASSED" } else { "FAILED" };
        eprintln!(
            "vm {} ({}): {verdict}: {}",
            run.series.label(),
            run.package,
            run.summary()
        );
        print_skips(run);
        print_failures(run);
    }
    eprintln!(
        "\n{:<8} {:<40} {:>6} {:>6} {:>7} {:>7} {:>7}",
        "kernel", "package", "passed", "failed", "skipped", "boot", "tests"
    );
    let time = |d: Option<Duration>| d.map(cmd::fmt_duration).unwrap_or_else(|| "-".into());
    for run in runs {
        let r = &run.report;
        eprintln!(
            "{:<8} {:<40} {:>6} {:>6} {:>7} {:>7} {:>7}",
            run.series.label(),
            run.package,
            r.count(Outcome::Passed),
            r.count(Outcome::Failed),
            r.count(Outcome::Skipped),
            time(run.boot),
            time(run.tests),
        );
    }
}

/// `skipped [5.10] ktls-trace-tests/ktls (test) :: sendfile_bytes: kernel without kTLS`
fn print_skips(run: &GuestRun) {
    for e in &run.report.exes {
        for t in e.tests.iter().filter(|t| t.outcome == Outcome::Skipped) {
            eprintln!(
                "  skipped [{}] {} :: {}: {}",
                run.series.label(),
                e.exe,
                t.name,
                t.details.first().map(String::as_str).unwrap_or("")
            );
        }
    }
}

/// The totals of every guest as one closing line, `guests: 600 passed, 0 failed, 24
/// skipped`: the shape CI log readers recognise.
pub fn totals_line(runs: &[GuestRun]) -> String {
    let sum = |o| runs.iter().map(|r| r.report.count(o)).sum::<usize>();
    format!(
        "guests: {} passed, {} failed, {} skipped",
        sum(Outcome::Passed),
        sum(Outcome::Failed),
        sum(Outcome::Skipped)
    )
}

fn print_failures(run: &GuestRun) {
    let label = run.series.label();
    let r = &run.report;
    let mut need_tail = false;
    for p in &r.problems {
        eprintln!("  FAILED [{label}] {p}");
        need_tail = true;
    }
    for e in &r.exes {
        if let Some(p) = &e.problem {
            eprintln!("  FAILED [{label}] {}: {p}", e.exe);
            need_tail = true;
        }
        for t in e.tests.iter().filter(|t| t.outcome == Outcome::Failed) {
            eprintln!("  FAILED [{label}] {} :: {}", e.exe, t.name);
            for d in &t.details {
                eprintln!("      {d}");
            }
        }
    }
    if need_tail {
        eprintln!(
            "  --- last {} console lines ({}) ---",
            run.tail.len(),
            run.log.display()
        );
        for l in &run.tail {
            eprintln!("  | {l}");
        }
    } else if !run.passed() {
        eprintln!("  console: {}", run.log.display());
    }
}

/// target/ as cargo sees it (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> Result<PathBuf> {
    let out = cmd::stdout(
        cmd::cargo()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(cmd::workspace_root()),
    )?;
    let meta: serde_json::Value =
        serde_json::from_str(&out).context("parsing `cargo metadata` output")?;
    let dir = meta
        .get("target_directory")
        .and_then(|d| d.as_str())
        .context("`cargo metadata` reported no target_directory")?;
    Ok(PathBuf::from(dir))
}

fn work_dir(series: Series) -> Result<PathBuf> {
    let dir = target_dir()?.join("vm").join(series.label());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Whether this host can show the real thing itself (kprobes and kernel TLS).
pub fn host_has_kprobes_and_ktls() -> bool {
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let ktls = Path::new("/proc/net/tls_stat").exists()
        || cmd::succeeds(Command::new("modprobe").args(["-n", "tls"]));
    kprobes && ktls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert!(is_progress_line("KT-BEGIN x"));
        assert!(is_progress_line("test a ... ok"));
        assert!(is_progress_line("[ 3.2] Kernel panic - not syncing"));
        assert!(!is_progress_line("running 3 tests"));
    }
}
