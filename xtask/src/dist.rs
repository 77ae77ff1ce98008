//! `cargo xtask dist`: the static binary users download, and what ships beside it.
//!
//! `ktls-trace` is built for x86_64-unknown-linux-musl (static-pie: no dynamic loader, no
//! shared libraries, so it runs unchanged on any distribution), without the workload
//! generator (feature `load`: the ktls crate does not build with musl yet), in the
//! release profile, with the eBPF object embedded as in every build. It is then stripped,
//! checked to be static, and asked to write its own completions and man pages (the hidden
//! `generate-assets` command), so that the xtask never links the ktls-trace crate.
//!
//! ```text
//! target/dist/ktls-trace-<version>-x86_64-linux-musl/
//!     ktls-trace                         the static binary, stripped
//!     completions/                       ktls-trace.bash, _ktls-trace (zsh), ktls-trace.fish
//!     man/                               ktls-trace.1 and ktls-trace-<command>.1
//!     ktls-trace-export.service          docs/deploy/: `export` under systemd, not as root
//! target/dist/ktls-trace-<version>-x86_64-linux-musl.tar.gz
//! ```
//!
//! `cargo xtask test` and `vm-test` build it too (cargo makes the second build a no-op) and
//! put the binary into every guest at /opt/kt/dist/ktls-trace (tests/tests/dist.rs).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, setup, vm};

/// Where the binary runs: the file names say it, the build's `--target` makes it so.
const PLATFORM: &str = "x86_64-linux-musl";

/// The example systemd unit, copied as is.
const UNIT: &str = "docs/deploy/ktls-trace-export.service";

/// What `cargo xtask dist` produced.
#[derive(Debug, Clone)]
pub struct Dist {
    /// `target/dist/ktls-trace-<version>-x86_64-linux-musl`.
    pub dir: PathBuf,
    /// The stripped static binary inside `dir`.
    pub binary: PathBuf,
    pub tarball: PathBuf,
}

pub fn dist_cmd() -> Result<()> {
    setup::setup(false)?;
    let started = Instant::now();
    let d = build()?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "dist: {} ({})",
        d.dir.display(),
        cmd::fmt_duration(started.elapsed())
    );
    println!(
        "  ktls-trace   {:.1} MB, static x86_64 (musl), stripped",
        size(&d.binary) as f64 / 1e6
    );
    for entry in ["completions", "man", "ktls-trace-export.service"] {
        println!("  {entry}");
    }
    println!(
        "dist: {} ({:.1} MB)",
        d.tarball.display(),
        size(&d.tarball) as f64 / 1e6
    );
    Ok(())
}

/// Builds the static binary and the directory and tarball around it.
pub fn build() -> Result<Dist> {
    let root = cmd::workspace_root();
    let built = build_static()?;
    let version = binary_version(&built)?;
    let name = format!("ktls-trace-{version}-{PLATFORM}");
    let base = vm::target_dir()?.join("dist");
    let dir = base.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let binary = dir.join("ktls-trace");
    cmd::stdout(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&binary)
            .arg(&built),
    )
    .with_context(|| format!("stripping {} (package binutils)", built.display()))?;
    check_static(&binary)?;

    // The binary describes itself: completions and man pages of exactly its commands.
    cmd::stdout(
        Command::new(&binary)
            .args(["generate-assets", "--out"])
            .arg(&dir),
    )
    .context("generating completions and man pages with the static binary")?;
    let unit = root.join(UNIT);
    std::fs::copy(&unit, dir.join("ktls-trace-export.service"))
        .with_context(|| format!("copying {}", unit.display()))?;

    let tarball = base.join(format!("{name}.tar.gz"));
    // Owned by root in the archive, entries in a stable order: the same tree packs the
    // same way on every machine.
    cmd::stdout(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-czf",
            ])
            .arg(&tarball)
            .arg("-C")
            .arg(&base)
            .arg(&name),
    )
    .with_context(|| format!("packing {}", tarball.display()))?;
    Ok(Dist {
        dir,
        binary,
        tarball,
    })
}

/// `cargo build -p ktls-trace --target x86_64-unknown-linux-musl --no-default-features
/// --release`; returns the binary cargo reports. The target is a flag, never
/// CARGO_BUILD_TARGET or RUSTFLAGS: ktls-trace's build script runs a nested cargo for the
/// eBPF target (aya-build), which inherits the environment.
fn build_static() -> Result<PathBuf> {
    let mut cargo = cmd::cargo();
    cargo
        .args(["build", "-p", "ktls-trace", "--target", setup::MUSL_TARGET])
        .args(["--no-default-features", "--release"])
        .current_dir(cmd::workspace_root());
    build::artifacts_of(&mut cargo)?
        .into_iter()
        .find(|a| !a.test && a.target == "ktls-trace" && a.kinds.iter().any(|k| k == "bin"))
        .map(|a| a.executable)
        .context("cargo build produced no static `ktls-trace` binary")
}

/// `ktls-trace 0.1.0` -> `0.1.0`: the version the binary itself reports (running it also
/// proves it starts on this host).
fn binary_version(binary: &Path) -> Result<String> {
    let out = cmd::stdout(Command::new(binary).arg("--version"))?;
    parse_version(&out).with_context(|| {
        format!(
            "{} --version printed {:?}, not `ktls-trace <version>`",
            binary.display(),
            out.trim()
        )
    })
}

fn parse_version(out: &str) -> Option<String> {
    let v = out.trim().strip_prefix("ktls-trace ")?;
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c));
    ok.then(|| v.to_string())
}

/// Fails unless `readelf` shows an x86_64 executable with no program interpreter and no
/// needed shared library: what makes it run on any distribution.
fn check_static(binary: &Path) -> Result<()> {
    let out = cmd::stdout(Command::new("readelf").args(["-hldW"]).arg(binary))
        .with_context(|| format!("reading the ELF headers of {}", binary.display()))?;
    let problems = static_problems(&out);
    if !problems.is_empty() {
        bail!(
            "{} is not static: {}",
            binary.display(),
            problems.join("; ")
        );
    }
    Ok(())
}

/// What in `readelf -hldW` output stands against a static x86_64 executable.
fn static_problems(readelf: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let header = |key: &str| {
        readelf
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim_start_matches(':').trim().to_string())
    };
    match header("Machine") {
        Some(m) if m.contains("X86-64") => {}
        m => problems.push(format!("machine {m:?}, not x86_64")),
    }
    match header("Type") {
        // EXEC: static; DYN: static-pie (musl's default), which still has no interpreter.
        Some(t) if t.starts_with("EXEC") || t.starts_with("DYN") => {}
        t => problems.push(format!("ELF type {t:?}, not an executable")),
    }
    for line in readelf.lines() {
        let line = line.trim();
        if line.starts_with("INTERP ") || line.contains("Requesting program interpreter") {
            problems.push(format!("a program interpreter: {line}"));
        }
        if line.contains("(NEEDED)") {
            problems.push(format!("a shared library: {line}"));
        }
    }
    problems.dedup();
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATIC_PIE: &str = "ELF Header:
  Class:                             ELF64
  Type:                              DYN (Position-Independent Executable file)
  Machine:                           Advanced Micro Devices X86-64

Program Headers:
  Type           Offset   VirtAddr           PhysAddr           FileSiz  MemSiz   Flg Align
  LOAD           0x000000 0x0000000000000000 0x0000000000000000 0x01f478 0x01f478 R   0x1000
  DYNAMIC        0x576320 0x0000000000577320 0x0000000000577320 0x000180 0x000180 RW  0x8
  GNU_STACK      0x000000 0x0000000000000000 0x0000000000000000 0x000000 0x000000 RW  0x10

Dynamic section at offset 0x576320 contains 20 entries:
  Tag        Type                         Name/Value
 0x000000000000001e (FLAGS)              BIND_NOW
 0x000000006ffffffb (FLAGS_1)            Flags: NOW PIE
";

    const GLIBC: &str = "ELF Header:
  Type:                              DYN (Position-Independent Executable file)
  Machine:                           Advanced Micro Devices X86-64
Program Headers:
  PHDR           0x000040 0x0000000000000040 0x0000000000000040 0x0002d8 0x0002d8 R   0x8
  INTERP         0x000318 0x0000000000000318 0x0000000000000318 0x00001c 0x00001c R   0x1
      [Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]
Dynamic section at offset 0x2dc8 contains 27 entries:
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
";

    #[test]
    fn a_static_pie_passes_and_a_glibc_binary_does_not() {
        assert_eq!(static_problems(STATIC_PIE), Vec::<String>::new());
        let p = static_problems(GLIBC);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("INTERP"), "{p:?}");
        assert!(p[1].contains("/lib64/ld-linux-x86-64.so.2"), "{p:?}");
        assert!(p[2].contains("libc.so.6"), "{p:?}");
        let arm = STATIC_PIE.replace("Advanced Micro Devices X86-64", "AArch64");
        assert_eq!(static_problems(&arm).len(), 1);
        assert_eq!(static_problems("").len(), 2, "no headers at all");
    }

    /// systemd itself reads the example unit: every key known, every value valid. Only
    /// the binary's path is replaced by one that exists here (systemd checks it), and man
    /// pages are not looked up (they are not installed on the build machine).
    #[test]
    fn the_example_unit_is_valid_for_systemd() {
        use std::io::Write as _;
        if cmd::which("systemd-analyze").is_none() {
            let _ = writeln!(
                std::io::stderr(),
                "\nKT-SKIP the_example_unit_is_valid_for_systemd: no systemd-analyze here"
            );
            return;
        }
        let unit = std::fs::read_to_string(cmd::workspace_root().join(UNIT)).expect("the unit");
        assert!(
            unit.contains("ExecStart=/usr/local/bin/ktls-trace export"),
            "{unit}"
        );
        let exe = std::env::current_exe().expect("current_exe");
        let dir = std::env::temp_dir().join(format!("xtask-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("ktls-trace-export.service");
        let here = unit.replace("/usr/local/bin/ktls-trace", &exe.to_string_lossy());
        std::fs::write(&path, here).expect("write");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("run systemd-analyze");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        // It exits 0 on unknown keys and bad values too, and says so on stderr.
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.trim().is_empty(), "{said}");
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("ktls-trace 0.1.0\n").as_deref(),
            Some("0.1.0")
        );
        assert_eq!(
            parse_version("ktls-trace 1.2.0-rc.1").as_deref(),
            Some("1.2.0-rc.1")
        );
        assert_eq!(parse_version("other 0.1.0"), None);
        assert_eq!(
            parse_version("ktls-trace ../x"),
            None,
            "a path, not a version"
        );
        assert_eq!(parse_version("ktls-trace "), None);
    }
}
