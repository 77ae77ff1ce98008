//! `cargo xtask build`: one build of everything the tests and guests need, with the
//! artifact paths taken from cargo's JSON messages instead of guessed from target/.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::{cmd, setup};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The cargo profile to build with.
    #[arg(long, value_enum, default_value = "ci")]
    pub profile: Profile,
}

/// The cargo profile of a build (Cargo.toml says why `ci` exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// cargo's default: unoptimized, what `cargo build` and `cargo test` use.
    Dev,
    /// Optimized with debug assertions and overflow checks: what the tests run with, on
    /// the host and in the guests.
    Ci,
    /// What users install.
    Release,
}

impl Profile {
    /// The cargo arguments that select it.
    pub fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Profile::Dev => &[],
            Profile::Ci => &["--profile", "ci"],
            Profile::Release => &["--release"],
        }
    }
}

/// The crates built for hosts and guests. The eBPF crate only builds for
/// bpfel-unknown-none (ktls-trace's build script does that), and the xtask's own tests
/// only make sense on the host (`cargo xtask test` runs them there).
pub const CARGO_SELECTION: &[&str] = &[
    "--workspace",
    "--exclude",
    "ktls-trace-ebpf",
    "--exclude",
    "xtask",
];

#[derive(Debug, Clone)]
pub struct Artifacts {
    pub ktls_trace: PathBuf,
    pub ktls_workload: PathBuf,
    pub tests: Vec<TestExe>,
    /// The static binary of `cargo xtask dist`, for the test guests (/opt/kt/dist/); the
    /// tasks that run tests build it and set this.
    pub dist: Option<PathBuf>,
}

/// One libtest executable (unit tests of a lib/bin, or an integration test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestExe {
    pub path: PathBuf,
    /// `package/target (kind)`, e.g. `ktls-trace-tests/trace (test)`: what reports show.
    pub label: String,
}

impl TestExe {
    /// The file name (cargo's `name-hash`): unique, and what the guest sees.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

pub fn build_cmd(args: &BuildArgs) -> Result<()> {
    setup::setup(false)?;
    let artifacts = build(args.profile)?;
    println!("{}", artifacts.ktls_trace.display());
    println!("{}", artifacts.ktls_workload.display());
    for t in &artifacts.tests {
        println!("{}\t{}", t.path.display(), t.label);
    }
    Ok(())
}

/// One `cargo build` of the libraries, binaries and test executables (the eBPF object
/// comes with it, through ktls-trace's build script); returns the binaries and tests.
///
/// One invocation, not `cargo build` then `cargo test --no-run`: the tests' dev-dependencies
/// unify features differently, so the two built ktls-trace and its dependents twice.
pub fn build(profile: Profile) -> Result<Artifacts> {
    let mut build = cmd::cargo();
    build
        .args(["build", "--lib", "--bins", "--tests"])
        .args(CARGO_SELECTION)
        .args(profile.cargo_args());
    let built = artifacts_of(&mut build)?;
    let bin = |name: &str| -> Result<PathBuf> {
        built
            .iter()
            .find(|a| !a.test && a.target == name && a.kinds.iter().any(|k| k == "bin"))
            .map(|a| a.executable.clone())
            .with_context(|| format!("cargo build produced no `{name}` binary"))
    };
    let ktls_trace = bin("ktls-trace")?;
    let ktls_workload = bin("ktls-workload")?;
    let mut tests: Vec<TestExe> = built
        .iter()
        .filter(|a| a.test)
        .map(|a| TestExe {
            label: format!("{}/{} ({})", a.package, a.target, a.kinds.join(",")),
            path: a.executable.clone(),
        })
        .collect();
    tests.sort_by(|a, b| a.label.cmp(&b.label));
    tests.dedup();
    Ok(Artifacts {
        ktls_trace,
        ktls_workload,
        tests,
        dist: None,
    })
}

/// An executable cargo reported.
#[derive(Debug, PartialEq, Eq)]
pub struct Artifact {
    pub package: String,
    pub target: String,
    pub kinds: Vec<String>,
    pub test: bool,
    pub executable: PathBuf,
}

/// Runs cargo with JSON messages on stdout (diagnostics still rendered on stderr for the
/// developer) and collects the executables it produced.
pub fn artifacts_of(cargo: &mut std::process::Command) -> Result<Vec<Artifact>> {
    cargo
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let shown = cmd::show(cargo);
    eprintln!("+ {shown}");
    let mut child = cargo
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let mut found = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.with_context(|| format!("reading the output of `{shown}`"))?;
            if let Some(a) = parse_artifact(&line) {
                found.push(a);
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(found)
}

/// One line of cargo's JSON output -> an executable artifact, if it is one.
fn parse_artifact(line: &str) -> Option<Artifact> {
    let msg: Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let executable = msg.get("executable")?.as_str()?;
    let target = msg.get("target")?;
    Some(Artifact {
        package: package_name(msg.get("package_id")?.as_str()?),
        target: target.get("name")?.as_str()?.to_string(),
        kinds: target
            .get("kind")?
            .as_array()?
            .iter()
            .filter_map(|k| k.as_str().map(String::from))
            .collect(),
        test: msg.get("profile")?.get("test")?.as_bool()?,
        executable: PathBuf::from(executable),
    })
}

/// The package name inside a cargo package id. Current cargo writes
/// `path+file:///work/main/tests#ktls-trace-tests@0.1.0`, or `...ktls-trace#0.1.0` when
/// the name equals the directory; older cargo wrote `name 0.1.0 (path+file://...)`.
fn package_name(id: &str) -> String {
    if let Some((url, fragment)) = id.split_once('#') {
        if let Some((name, _version)) = fragment.split_once('@') {
            return name.to_string();
        }
        return Path::new(url)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| id.to_string());
    }
    id.split_whitespace().next().unwrap_or(id).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_ids() {
        assert_eq!(
            package_name("path+file:///work/main/ktls-trace#0.1.0"),
            "ktls-trace"
        );
        assert_eq!(
            package_name("path+file:///work/main/tests#ktls-trace-tests@0.1.0"),
            "ktls-trace-tests"
        );
        assert_eq!(
            package_name("registry+https://github.com/rust-lang/crates.io-index#serde@1.0.1"),
            "serde"
        );
        assert_eq!(
            package_name("xtask 0.1.0 (path+file:///work/main/xtask)"),
            "xtask"
        );
    }

    #[test]
    fn test_executables_are_recognised() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#ktls-trace-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"trace","src_path":"/w/tests/tests/trace.rs","edition":"2024","doc":false,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/w/target/debug/deps/trace-38ac2fb9c6f7f22b"],"executable":"/w/target/debug/deps/trace-38ac2fb9c6f7f22b","fresh":false}"#;
        let a = parse_artifact(line).unwrap();
        assert_eq!(
            a,
            Artifact {
                package: "ktls-trace-tests".into(),
                target: "trace".into(),
                kinds: vec!["test".into()],
                test: true,
                executable: "/w/target/debug/deps/trace-38ac2fb9c6f7f22b".into(),
            }
        );
    }

    #[test]
    fn libraries_and_other_messages_are_skipped() {
        let lib = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/ktls-trace#0.1.0","target":{"kind":["lib"],"name":"ktls_trace"},"profile":{"test":false},"executable":null,"fresh":true}"#;
        assert_eq!(parse_artifact(lib), None);
        assert_eq!(
            parse_artifact(r#"{"reason":"build-finished","success":true}"#),
            None
        );
        assert_eq!(parse_artifact("not json"), None);
    }
}
