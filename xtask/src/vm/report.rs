//! Turning a guest's console into per-test results.
//!
//! The guest prints `KT-BEGIN <exe>` / `KT-END <exe> rc=<n>` around every test executable
//! (vm/initramfs.rs); in between is libtest's own output:
//!
//! ```text
//! test probes::attach_6_1 ... ok
//! test trace::sendfile_bytes ... FAILED
//! failures:
//! ---- trace::sendfile_bytes stdout ----
//! <panic message, captured output>
//! failures:
//!     trace::sendfile_bytes
//! test result: FAILED. 1 passed; 1 failed; ...
//! ```
//!
//! Anything that does not end in a clean KT-END with every test accounted for is a
//! failure: a panic, an oops, a timeout, an executable that never started or never
//! finished, or one that exited non-zero without a failed test line.
//!
//! A test that cannot run on a kernel (kTLS tests on 5.10) says so on stderr, past
//! libtest's capture, and returns: `KT-SKIP <test fn name>: <reason>`. It counts as
//! skipped, not passed. The name is matched against the `test <path::name> ... ok` lines
//! by the last path segment; the line usually lands right after `test <name> ... `,
//! which binds it to that test even when two modules share a function name.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Ignored,
    /// Passed after printing `KT-SKIP <name>: <reason>`.
    Skipped,
}

/// What /init said about kernel TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// `KT-TLS loaded`
    Loaded,
    /// `KT-TLS none (...)`: a series built without CONFIG_TLS.
    Absent,
    /// `KT-TLS-FAILED ...`: `modprobe tls` failed on a series that has it.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    pub outcome: Outcome,
    /// The `---- name stdout ----` section for failed tests; the reason for skipped ones.
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExeResult {
    /// cargo's file name (`trace-38ac2fb9c6f7f22b`).
    pub exe: String,
    pub began: bool,
    pub rc: Option<i32>,
    pub tests: Vec<TestResult>,
    /// Why the executable itself counts as failed, beyond its failed tests.
    pub problem: Option<String>,
    /// `KT-SKIP` lines seen while it ran, applied to its tests when it ends.
    skips: Vec<SkipLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SkipLine {
    /// The name the test printed (a function name, or a path).
    name: String,
    reason: String,
    /// The full name of the test that was running when the line came, if it matched.
    bound_to: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GuestReport {
    pub booted: bool,
    pub tls: Option<Tls>,
    pub done: bool,
    pub panic: Option<String>,
    pub oops: Option<String>,
    pub timed_out: bool,
    pub exes: Vec<ExeResult>,
    /// Failures that are not one test's: boot, tls, panic, timeout.
    pub problems: Vec<String>,
}

impl GuestReport {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.exes
            .iter()
            .flat_map(|e| &e.tests)
            .filter(|t| t.outcome == outcome)
            .count()
    }

    pub fn passed(&self) -> bool {
        self.problems.is_empty()
            && self.exes.iter().all(|e| {
                e.problem.is_none() && e.tests.iter().all(|t| t.outcome != Outcome::Failed)
            })
    }
}

/// Parses the console of a test-plan guest. `plan` lists the executables the guest was
/// given; `timed_out` says whether the host had to kill qemu.
pub fn parse(lines: &[&str], plan: &[String], timed_out: bool) -> GuestReport {
    let mut report = GuestReport {
        timed_out,
        ..GuestReport::default()
    };
    let mut exes: BTreeMap<String, ExeResult> = BTreeMap::new();
    let mut current: Option<String> = None;
    // libtest state inside the current executable.
    let mut pending: Option<String> = None;
    let mut section: Option<(String, Vec<String>)> = None;
    let mut in_failure_list = false;
    let mut failure_list: Vec<String> = Vec::new();

    for &raw in lines {
        let line = raw.trim_end();
        if let Some(msg) = kernel_event(line, "Kernel panic") {
            report.panic.get_or_insert(msg);
        }
        if let Some(msg) = kernel_event(line, "Oops:").or_else(|| kernel_event(line, "BUG: ")) {
            report.oops.get_or_insert(msg);
        }
        if marker(line, "KT-BOOTED").is_some() {
            report.booted = true;
            continue;
        }
        if marker(line, "KT-TLS-FAILED").is_some() {
            report.tls = Some(Tls::Failed);
            continue;
        }
        if let Some(rest) = marker(line, "KT-TLS") {
            report.tls = Some(if rest.trim_start().starts_with("none") {
                Tls::Absent
            } else {
                Tls::Loaded
            });
            continue;
        }
        if marker(line, "KT-DONE").is_some() {
            report.done = true;
            continue;
        }
        if let Some(rest) = marker(line, "KT-BEGIN") {
            let exe = rest.trim().to_string();
            exes.entry(exe.clone()).or_insert_with(|| ExeResult {
                exe: exe.clone(),
                ..ExeResult::default()
            });
            if let Some(e) = exes.get_mut(&exe) {
                e.began = true;
            }
            current = Some(exe);
            pending = None;
            section = None;
            in_failure_list = false;
            failure_list.clear();
            continue;
        }
        if let Some(rest) = marker(line, "KT-END") {
            let (exe, rc) = match rest.trim().rsplit_once(" rc=") {
                Some((exe, rc)) => (exe.trim().to_string(), rc.trim().parse::<i32>().ok()),
                None => (rest.trim().to_string(), None),
            };
            if let Some((name, details)) = section.take() {
                attach_details(&mut exes, &exe, &name, details);
            }
            if let Some(e) = exes.get_mut(&exe) {
                e.rc = rc;
                settle(e, pending.take(), &failure_list);
            }
            current = None;
            in_failure_list = false;
            failure_list.clear();
            continue;
        }
        let Some(exe) = current.clone() else {
            continue;
        };

        if let Some((name, reason)) = skip_line(line) {
            // `test x ... KT-SKIP x: why`: the test line and the skip share a line.
            if let Some((test, _)) = test_line(line) {
                pending = Some(test.to_string());
            }
            let bound_to = pending
                .clone()
                .filter(|p| last_segment(p) == last_segment(&name));
            exes.entry(exe.clone()).or_default().skips.push(SkipLine {
                name,
                reason,
                bound_to,
            });
            continue;
        }

        // A failure section runs until the next section header or the "failures:" list.
        // Inside a section, a header is only one of a test that ran here: a test's own
        // output may have lines of that shape ("---- server's stderr ----").
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|r| {
                r.strip_suffix(" stdout ----")
                    .or_else(|| r.strip_suffix(" stderr ----"))
            })
            .filter(|name| {
                section.is_none()
                    || exes
                        .get(&exe)
                        .is_some_and(|e| e.tests.iter().any(|t| t.name == *name))
            })
        {
            if let Some((prev, details)) = section.take() {
                attach_details(&mut exes, &exe, &prev, details);
            }
            section = Some((name.to_string(), Vec::new()));
            continue;
        }
        // "failures:" opens the sections and, the second time, the list of failed names.
        if line == "failures:" {
            if let Some((prev, details)) = section.take() {
                attach_details(&mut exes, &exe, &prev, details);
            }
            in_failure_list = true;
            continue;
        }
        if let Some((_, details)) = section.as_mut() {
            details.push(line.to_string());
            continue;
        }
        if in_failure_list {
            if let Some(name) = line.strip_prefix("    ") {
                failure_list.push(name.trim().to_string());
                continue;
            }
            if !line.is_empty() {
                in_failure_list = false;
            }
        }

        if let Some((name, status)) = test_line(line) {
            let outcome = match status {
                "ok" => Some(Outcome::Passed),
                "FAILED" => Some(Outcome::Failed),
                s if s.starts_with("ignored") => Some(Outcome::Ignored),
                _ => None,
            };
            let e = exes.entry(exe.clone()).or_default();
            match outcome {
                Some(outcome) => {
                    e.tests.push(TestResult {
                        name: name.to_string(),
                        outcome,
                        details: Vec::new(),
                    });
                    pending = None;
                }
                // Something (a child process sharing the console) wrote between
                // "test x ... " and the verdict: the verdict comes on a later line.
                None => pending = Some(name.to_string()),
            }
            continue;
        }
        if let Some(name) = pending.clone() {
            let verdict = match line.trim() {
                "ok" => Some(Outcome::Passed),
                "FAILED" => Some(Outcome::Failed),
                _ => None,
            };
            if let Some(outcome) = verdict {
                exes.entry(exe.clone()).or_default().tests.push(TestResult {
                    name,
                    outcome,
                    details: Vec::new(),
                });
                pending = None;
            }
        }
    }

    // Whatever was running when the console stopped never reached KT-END.
    if let Some(exe) = current
        && let Some(e) = exes.get_mut(&exe)
    {
        if let Some((name, details)) = section.take() {
            for t in e.tests.iter_mut().filter(|t| t.name == name) {
                t.details = details.clone();
            }
        }
        // Name the test that was running: it is the one that hung or crashed.
        if let Some(name) = pending.take() {
            e.tests.push(TestResult {
                name,
                outcome: Outcome::Failed,
                details: vec!["no verdict: the guest stopped while this test ran".into()],
            });
        }
        apply_skips(e);
        e.problem = Some("no KT-END: the executable crashed the guest, hung or was cut off".into());
    }

    for exe in plan {
        let e = exes.remove(exe).unwrap_or_else(|| ExeResult {
            exe: exe.clone(),
            problem: Some("never started".into()),
            ..ExeResult::default()
        });
        report.exes.push(e);
    }
    // Markers for executables not in the plan (a developer's extra run): keep them.
    report.exes.extend(exes.into_values());

    if !report.booted {
        report
            .problems
            .push("the guest never reached /init (no KT-BOOTED)".into());
    }
    if report.tls == Some(Tls::Failed) {
        report
            .problems
            .push("`modprobe tls` failed in the guest".into());
    }
    if let Some(p) = &report.panic {
        report.problems.push(format!("kernel panic: {p}"));
    }
    if let Some(o) = &report.oops {
        report.problems.push(format!("kernel oops/BUG: {o}"));
    }
    if report.timed_out {
        report.problems.push("timed out: qemu was killed".into());
    } else if report.booted && !report.done && report.panic.is_none() {
        report
            .problems
            .push("the guest stopped before KT-DONE".into());
    }
    report
}

/// Final accounting of one executable at its KT-END.
fn settle(e: &mut ExeResult, pending: Option<String>, failure_list: &[String]) {
    for name in failure_list {
        match e.tests.iter_mut().find(|t| &t.name == name) {
            Some(t) => t.outcome = Outcome::Failed,
            None => e.tests.push(TestResult {
                name: name.clone(),
                outcome: Outcome::Failed,
                details: Vec::new(),
            }),
        }
    }
    if let Some(name) = pending {
        // libtest exits 0 only when every test passed.
        let outcome = if e.rc == Some(0) {
            Outcome::Passed
        } else {
            Outcome::Failed
        };
        e.tests.push(TestResult {
            name,
            outcome,
            details: Vec::new(),
        });
    }
    apply_skips(e);
    let any_failed = e.tests.iter().any(|t| t.outcome == Outcome::Failed);
    e.problem = match e.rc {
        Some(0) => None,
        Some(rc) if any_failed => (rc != 101).then(|| format!("exited rc={rc}")),
        Some(rc) if rc > 128 => Some(format!(
            "killed by signal {} (rc={rc}; 143 = the guest's per-executable timeout)",
            rc - 128
        )),
        Some(rc) => Some(format!("exited rc={rc} without a failed test line")),
        None => Some("KT-END without a readable exit code".into()),
    };
}

/// Turns passed tests that printed `KT-SKIP` into skipped ones: the test the line was
/// bound to, else every test whose last path segment is the name. A test that printed
/// KT-SKIP and then failed stays failed.
fn apply_skips(e: &mut ExeResult) {
    for skip in &e.skips {
        for t in e.tests.iter_mut().filter(|t| t.outcome == Outcome::Passed) {
            let matches = match &skip.bound_to {
                Some(full) => &t.name == full,
                None => last_segment(&t.name) == last_segment(&skip.name),
            };
            if matches {
                t.outcome = Outcome::Skipped;
                t.details = vec![skip.reason.clone()];
            }
        }
    }
}

/// `tls::sendfile_bytes` -> `sendfile_bytes`.
fn last_segment(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name).trim()
}

/// `KT-SKIP <name>: <reason>` anywhere in the line -> (name, reason). The name may be a
/// path (`tls::sendfile_bytes`), so the separator is a colon followed by a blank.
fn skip_line(line: &str) -> Option<(String, String)> {
    let rest = marker(line, "KT-SKIP")?.trim();
    let (name, reason) = match rest.split_once(": ") {
        Some((n, r)) => (n.trim(), r.trim()),
        None => (rest.strip_suffix(':').unwrap_or(rest).trim(), ""),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let reason = if reason.is_empty() {
        "no reason given"
    } else {
        reason
    };
    Some((name.to_string(), reason.to_string()))
}

fn attach_details(
    exes: &mut BTreeMap<String, ExeResult>,
    exe: &str,
    name: &str,
    mut d: Vec<String>,
) {
    while d.last().is_some_and(|l| l.trim().is_empty()) {
        d.pop();
    }
    let Some(e) = exes.get_mut(exe) else { return };
    match e.tests.iter_mut().find(|t| t.name == name) {
        Some(t) => t.details = d,
        None => e.tests.push(TestResult {
            name: name.to_string(),
            outcome: Outcome::Failed,
            details: d,
        }),
    }
}

/// `KT-NAME rest` anywhere in the line (a kernel message may precede it on the same line).
fn marker<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(name)?;
    let rest = &line[at + name.len()..];
    (rest.is_empty() || rest.starts_with(' ')).then_some(rest)
}

/// `test <name> ... <status>` -> (name, status). Status may be empty (verdict pending).
fn test_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    if rest.starts_with("result:") {
        return None;
    }
    let (name, status) = rest
        .split_once(" ... ")
        .or_else(|| rest.strip_suffix(" ...").map(|n| (n, "")))?;
    Some((name.trim(), status.trim()))
}

/// A kernel message line containing `what`, without the `[  12.34]` timestamp.
fn kernel_event(line: &str, what: &str) -> Option<String> {
    let at = line.find(what)?;
    Some(line[at..].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const PASSING: &str = "\
[    0.000000] Linux version 6.12.117+deb12-cloud-amd64
KT-BOOTED guest=6.12 kernel=6.12.117+deb12-cloud-amd64 uptime=4.2s
KT-TLS loaded
KT-BEGIN ktls_trace-4a768772427ae4be

running 2 tests
test event::decode ... ok
test aggregate::sums ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

KT-END ktls_trace-4a768772427ae4be rc=0
KT-BEGIN ktls-e59bfd2e298f07e4

running 1 test
test guest_only ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.10s

KT-END ktls-e59bfd2e298f07e4 rc=0
KT-DONE uptime=12.0s
";

    #[test]
    fn a_clean_run_passes() {
        let lines: Vec<&str> = PASSING.lines().collect();
        let r = parse(
            &lines,
            &plan(&["ktls_trace-4a768772427ae4be", "ktls-e59bfd2e298f07e4"]),
            false,
        );
        assert!(r.passed(), "{r:#?}");
        assert_eq!(r.count(Outcome::Passed), 3);
        assert_eq!(r.exes[0].tests[1].name, "aggregate::sums");
    }

    #[test]
    fn failures_carry_their_section() {
        let log = "\
KT-BOOTED guest=6.1 kernel=6.1.0-56-cloud-amd64 uptime=5.0s
KT-TLS loaded
KT-BEGIN trace-1
running 2 tests
test bytes_exact ... FAILED
test pid_filter ... ok

failures:

---- bytes_exact stdout ----
thread 'bytes_exact' panicked at tests/tests/trace.rs:10:5:
assertion `left == right` failed
  left: 4000000
 right: 3999999


failures:
    bytes_exact

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out

KT-END trace-1 rc=101
KT-DONE uptime=9.0s
";
        let lines: Vec<&str> = log.lines().collect();
        let r = parse(&lines, &plan(&["trace-1"]), false);
        assert!(!r.passed());
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let e = &r.exes[0];
        assert_eq!(
            e.problem, None,
            "rc=101 with a failed test is explained by the test"
        );
        let failed: Vec<_> = e
            .tests
            .iter()
            .filter(|t| t.outcome == Outcome::Failed)
            .collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].name, "bytes_exact");
        assert_eq!(
            failed[0].details[0],
            "thread 'bytes_exact' panicked at tests/tests/trace.rs:10:5:"
        );
        assert_eq!(
            failed[0].details.last().map(String::as_str),
            Some(" right: 3999999")
        );
    }

    /// A failed test's own output with a line shaped like libtest's section header (the
    /// export test prints its server's stderr under "---- export's stderr ----") stays
    /// that test's detail: it is not a second failed test.
    #[test]
    fn a_header_shaped_line_inside_a_section_is_detail() {
        let log = "\
KT-BOOTED guest=6.12 kernel=x uptime=1s
KT-TLS loaded
KT-BEGIN export-1
running 2 tests
test scrapes ... FAILED
test rules ... ok

failures:

---- scrapes stdout ----
thread 'scrapes' panicked at tests/tests/export.rs:578:5:
rate 0
---- export's stderr ----
serving metrics
---- rules stdout ----
never printed by libtest for a passing test, but a known name

failures:
    scrapes

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out

KT-END export-1 rc=101
KT-DONE uptime=9.0s
";
        let lines: Vec<&str> = log.lines().collect();
        let r = parse(&lines, &plan(&["export-1"]), false);
        let e = &r.exes[0];
        assert_eq!(e.tests.len(), 2, "{:#?}", e.tests);
        assert_eq!(r.count(Outcome::Failed), 1);
        let failed = &e.tests[0];
        assert_eq!(failed.name, "scrapes");
        assert_eq!(
            failed.details.last().map(String::as_str),
            Some("serving metrics")
        );
    }

    #[test]
    fn verdict_after_interleaved_output_is_found() {
        let log = "\
KT-BOOTED guest=6.1 kernel=x uptime=1s
KT-TLS loaded
KT-BEGIN t-1
test noisy ... ktls-trace: running in full mode
ok
test quiet ... ok
KT-END t-1 rc=0
KT-DONE uptime=2s
";
        let lines: Vec<&str> = log.lines().collect();
        let r = parse(&lines, &plan(&["t-1"]), false);
        assert!(r.passed(), "{r:#?}");
        assert_eq!(r.count(Outcome::Passed), 2);
    }

    #[test]
    fn nonzero_exit_without_failure_is_a_failure() {
        let log =
            "KT-BOOTED\nKT-TLS loaded\nKT-BEGIN t-1\ntest a ... ok\nKT-END t-1 rc=139\nKT-DONE\n";
        let lines: Vec<&str> = log.lines().collect();
        let r = parse(&lines, &plan(&["t-1"]), false);
        assert!(!r.passed());
        assert!(
            r.exes[0]
                .problem
                .as_deref()
                .unwrap_or("")
                .contains("signal 11")
        );
    }

    #[test]
    fn panic_timeout_and_missing_executables_fail() {
        let log = "\
KT-BOOTED guest=6.12 kernel=x uptime=1s
KT-TLS-FAILED modprobe tls exited 1
KT-BEGIN t-1
running 1 test
test hangs ... [   30.1] Kernel panic - not syncing: Fatal exception
";
        let lines: Vec<&str> = log.lines().collect();
        let r = parse(&lines, &plan(&["t-1", "t-2"]), false);
        assert!(!r.passed());
        assert_eq!(r.tls, Some(Tls::Failed));
        assert!(
            r.panic
                .as_deref()
                .unwrap_or("")
                .starts_with("Kernel panic - not syncing")
        );
        assert!(
            r.exes[0]
                .problem
                .as_deref()
                .unwrap_or("")
                .contains("no KT-END")
        );
        assert_eq!(r.exes[0].tests[0].name, "hangs");
        assert_eq!(r.exes[0].tests[0].outcome, Outcome::Failed);
        assert_eq!(r.exes[1].problem.as_deref(), Some("never started"));
        assert!(r.problems.iter().any(|p| p.contains("modprobe tls")));

        let r = parse(&["KT-BOOTED x"], &plan(&[]), true);
        assert!(r.problems.iter().any(|p| p.contains("timed out")));
        let r = parse(&["[ 0.1] early boot"], &plan(&[]), false);
        assert!(r.problems.iter().any(|p| p.contains("never reached /init")));
    }

    #[test]
    fn markers_and_test_lines() {
        assert_eq!(marker("KT-TLS loaded", "KT-TLS"), Some(" loaded"));
        assert_eq!(marker("KT-TLS-FAILED x", "KT-TLS"), None);
        assert_eq!(marker("[  1.0] foo KT-DONE", "KT-DONE"), Some(""));
        assert_eq!(test_line("test a::b ... ok"), Some(("a::b", "ok")));
        assert_eq!(
            test_line("test a ... ignored, needs kprobes"),
            Some(("a", "ignored, needs kprobes"))
        );
        assert_eq!(test_line("test a ..."), Some(("a", "")));
        assert_eq!(test_line("test result: ok. 1 passed"), None);
        assert_eq!(test_line("testing"), None);
    }

    #[test]
    fn kt_skip_lines_make_skipped_tests() {
        // As the 5.10 console shows it: the skip line lands right after libtest's
        // `test <name> ... ` (stderr is not buffered), the verdict on the next line.
        let log = "\
KT-BOOTED guest=5.10 kernel=5.10.0-46-cloud-amd64 uptime=3.1s
KT-TLS none (kernel built without CONFIG_TLS)
KT-BEGIN ktls-1

running 5 tests
test tls::sendfile_bytes ... KT-SKIP sendfile_bytes: kernel without kTLS (CONFIG_TLS not set)
ok
test plain::sendfile_bytes ... ok
test tls::write_records ... KT-SKIP tls::write_records: no kTLS
ok
test fallback::tracepoints ... ok
test tls::broken ... KT-SKIP broken: no kTLS
FAILED

failures:

---- tls::broken stdout ----
thread 'tls::broken' panicked at tests/tests/ktls.rs:9:5:
skipped, then panicked

failures:
    tls::broken

test result: FAILED. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out

KT-END ktls-1 rc=101
KT-BEGIN unit-2
KT-SKIP late_name: printed before libtest's line reached the console
test mod_a::late_name ... ok
test mod_b::other ... ok
KT-SKIP nobody: matches no test
KT-END unit-2 rc=0
KT-DONE uptime=20s
";
        let lines: Vec<&str> = log.lines().collect();
        let r = parse(&lines, &plan(&["ktls-1", "unit-2"]), false);
        assert_eq!(r.tls, Some(Tls::Absent));
        assert!(
            !r.problems.iter().any(|p| p.contains("tls")),
            "{:?}",
            r.problems
        );
        let outcome = |exe: usize, name: &str| {
            r.exes[exe]
                .tests
                .iter()
                .find(|t| t.name == name)
                .map(|t| (t.outcome, t.details.first().cloned().unwrap_or_default()))
        };
        assert_eq!(
            outcome(0, "tls::sendfile_bytes"),
            Some((
                Outcome::Skipped,
                "kernel without kTLS (CONFIG_TLS not set)".to_string()
            ))
        );
        assert_eq!(
            outcome(0, "plain::sendfile_bytes").map(|o| o.0),
            Some(Outcome::Passed),
            "same function name in another module: the line was bound to the running test"
        );
        assert_eq!(
            outcome(0, "tls::write_records"),
            Some((Outcome::Skipped, "no kTLS".to_string()))
        );
        assert_eq!(
            outcome(0, "tls::broken").map(|o| o.0),
            Some(Outcome::Failed),
            "a test that fails after KT-SKIP is a failure"
        );
        assert_eq!(
            outcome(1, "mod_a::late_name").map(|o| o.0),
            Some(Outcome::Skipped),
            "matched by the last path segment"
        );
        assert_eq!(
            outcome(1, "mod_b::other").map(|o| o.0),
            Some(Outcome::Passed)
        );
        assert_eq!(r.count(Outcome::Skipped), 3);
        assert_eq!(r.count(Outcome::Passed), 3);
        assert_eq!(r.count(Outcome::Failed), 1);
        assert!(!r.passed());
    }

    #[test]
    fn skip_line_format() {
        assert_eq!(
            skip_line("KT-SKIP sendfile_bytes: no kTLS: CONFIG_TLS not set"),
            Some((
                "sendfile_bytes".to_string(),
                "no kTLS: CONFIG_TLS not set".to_string()
            ))
        );
        assert_eq!(
            skip_line("test a ... KT-SKIP a::b:"),
            Some(("a::b".to_string(), "no reason given".to_string()))
        );
        assert_eq!(skip_line("KT-SKIP : why"), None);
        assert_eq!(skip_line("KT-SKIPPED x: y"), None);
        assert_eq!(last_segment("a::b::c"), "c");
        assert_eq!(last_segment("c"), "c");
    }

    #[test]
    fn tls_markers() {
        let tls = |line: &str| parse(&["KT-BOOTED x", line, "KT-DONE"], &plan(&[]), false);
        assert_eq!(tls("KT-TLS loaded").tls, Some(Tls::Loaded));
        let none = tls("KT-TLS none (kernel built without CONFIG_TLS)");
        assert_eq!(none.tls, Some(Tls::Absent));
        assert!(none.passed(), "{:?}", none.problems);
        let failed = tls("KT-TLS-FAILED modprobe tls exited 1");
        assert_eq!(failed.tls, Some(Tls::Failed));
        assert!(!failed.passed());
    }
}
