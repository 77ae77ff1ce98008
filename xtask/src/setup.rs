//! `cargo xtask setup`: make a fresh machine able to build and test, and cost almost
//! nothing on a machine that already can (every other task runs it first).
//!
//! What the build needs and why:
//! - `rust-src` on the nightly toolchain: aya-build compiles the eBPF crate with
//!   `-Z build-std=core` for bpfel-unknown-none, which needs the core sources.
//! - bpf-linker, linked against the nightly toolchain's own libLLVM so that the LLVM
//!   that links the eBPF object is the one rustc emitted bitcode for (no system LLVM).
//! - the x86_64-unknown-linux-musl target of the stable toolchain: `cargo xtask dist`
//!   builds the static binary with it (rustup's target ships musl's libc.a and crt
//!   objects, so the host's gcc links it; no musl-gcc is needed, because the static build
//!   leaves out the workload generator and with it ring, the only crate with C code).
//! - Debian packages for the QEMU guests (docs/testing.md).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::cmd;

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Rebuild bpf-linker even when a working one is found (it honours CARGO_INSTALL_ROOT,
    /// so the install path can be exercised without touching the installed linker).
    #[arg(long)]
    pub reinstall_bpf_linker: bool,
}

/// The bpf-linker release known to work with aya 0.14 / aya-build 0.2 here.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tasks use: (package, a command it provides, why).
pub const DEBIAN_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "qemu-system-x86",
        "qemu-system-x86_64",
        "boots the kTLS test kernels",
    ),
    ("busybox-static", "busybox", "the guests' shell and tools"),
    ("kmod", "depmod", "indexes the guest kernels' modules"),
    ("cpio", "cpio", "packs the initramfs"),
    (
        "xz-utils",
        "xz",
        "unpacks .ko.xz kernel modules (6.12 and later)",
    ),
    (
        "zstd",
        "zstd",
        "unpacks .ko.zst kernel modules of newer kernels",
    ),
    (
        "tmux",
        "tmux",
        "terminal multiplexer for the interactive demos",
    ),
    ("curl", "curl", "a real TLS client in the guests' tests"),
    ("openssl", "openssl", "a second real TLS client (s_client)"),
    (
        "binutils",
        "strip",
        "strips the binaries copied into the guests; readelf checks the static one",
    ),
    (
        "util-linux",
        "setpriv",
        "runs the static binary as a non-root user with chosen capabilities in the guests",
    ),
];

pub fn setup_cmd(args: &SetupArgs) -> Result<()> {
    setup(args.reinstall_bpf_linker)
}

/// Runs every check; installs only what is missing.
pub fn setup(reinstall_bpf_linker: bool) -> Result<()> {
    let started = Instant::now();
    let sysroot = ensure_nightly()?;
    ensure_rust_src()?;
    ensure_musl_target()?;
    ensure_bpf_linker(&sysroot, reinstall_bpf_linker)?;
    ensure_debian_packages()?;
    eprintln!("setup: ready ({})", cmd::fmt_duration(started.elapsed()));
    Ok(())
}

/// The nightly toolchain's sysroot, installing the toolchain if rustup lacks it.
fn ensure_nightly() -> Result<PathBuf> {
    let sysroot = || -> Result<PathBuf> {
        let out = cmd::stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        Ok(PathBuf::from(out.trim()))
    };
    if let Ok(path) = sysroot() {
        return Ok(path);
    }
    eprintln!("setup: no nightly toolchain; installing it (the eBPF crate needs nightly)");
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .context("installing the nightly toolchain")?;
    sysroot().context("nightly toolchain still unusable after installing it")
}

fn ensure_rust_src() -> Result<()> {
    let listing = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("asking rustup for the nightly toolchain's components")?;
    if has_component(&listing, "rust-src") {
        eprintln!("setup: rust-src (nightly): present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("adding rust-src to the nightly toolchain")
}

/// The target of the static binary (`cargo xtask dist`).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Adds the musl target to the toolchain that builds the workspace (run in the workspace,
/// so that a rust-toolchain file or override there would count).
fn ensure_musl_target() -> Result<()> {
    let root = cmd::workspace_root();
    let listing = cmd::stdout(
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .current_dir(&root),
    )
    .context("asking rustup for the installed targets")?;
    if has_component(&listing, MUSL_TARGET) {
        eprintln!("setup: {MUSL_TARGET} target: present");
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["target", "add", MUSL_TARGET])
            .current_dir(&root),
    )
    .with_context(|| format!("adding the {MUSL_TARGET} target (for `cargo xtask dist`)"))
}

/// True when `rustup component list --installed` (or `rustup target list --installed`)
/// output names the component. Rustup
/// prints target-independent components such as `rust-src` bare (others carry a target
/// suffix, `rust-std-x86_64-unknown-linux-gnu`), so an exact match is the right test.
fn has_component(listing: &str, component: &str) -> bool {
    listing
        .lines()
        .any(|line| line.split_whitespace().next() == Some(component))
}

fn ensure_bpf_linker(sysroot: &Path, reinstall: bool) -> Result<()> {
    if !reinstall {
        // "Present" means it runs: a linker whose libLLVM vanished (nightly updated) fails
        // here and gets rebuilt against the current toolchain.
        if let Ok(version) = cmd::stdout(Command::new("bpf-linker").arg("--version")) {
            eprintln!("setup: bpf-linker: present ({})", version.trim());
            return Ok(());
        }
    }
    install_bpf_linker(sysroot)
}

fn install_bpf_linker(sysroot: &Path) -> Result<()> {
    let libdir = sysroot.join("lib");
    let names = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    let lib = libllvm_file(names).with_context(|| {
        format!(
            "no libLLVM.so.* in {}; is the nightly toolchain complete?",
            libdir.display()
        )
    })?;
    let major =
        llvm_major(&lib).with_context(|| format!("cannot read the LLVM version from {lib}"))?;
    if ensure_libllvm_link(&libdir, &lib)? {
        eprintln!("setup: linked {}/libLLVM.so -> {lib}", libdir.display());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {lib} (LLVM {major}); \
         this takes a few minutes once"
    );
    let feature = format!("llvm-{major}");
    // The toolchain directory is the LLVM prefix: `<prefix>/lib/libLLVM.so` is what the
    // build links and what the installed binary's rpath points at, so it lives exactly as
    // long as the toolchain (and survives `cargo clean`).
    cmd::run(
        cmd::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            // --force: we only get here when the installed one is missing or broken.
            .args(["--force", "--no-default-features", "--features", &feature])
            .env("LLVM_PREFIX", sysroot),
    )
    .context("building bpf-linker")?;

    let installed = cargo_bin_dir().join("bpf-linker");
    let version = cmd::stdout(Command::new(&installed).arg("--version"))
        .with_context(|| format!("the freshly built {} does not run", installed.display()))?;
    eprintln!(
        "setup: bpf-linker: installed {} ({})",
        installed.display(),
        version.trim()
    );
    if cmd::which("bpf-linker").as_deref() != Some(installed.as_path()) {
        eprintln!(
            "setup: warning: {} is not the bpf-linker found in PATH; add {} to PATH",
            installed.display(),
            cargo_bin_dir().display()
        );
    }
    Ok(())
}

/// Where `cargo install` puts binaries: CARGO_INSTALL_ROOT, else CARGO_HOME, else ~/.cargo.
fn cargo_bin_dir() -> PathBuf {
    let env_dir = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env_dir("CARGO_INSTALL_ROOT")
        .or_else(|| env_dir("CARGO_HOME"))
        .or_else(|| env_dir("HOME").map(|h| h.join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

/// The versioned libLLVM file of a toolchain's lib/, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
/// The file name changes with every LLVM bump, so it is discovered, never hard-coded.
fn libllvm_file(names: impl Iterator<Item = String>) -> Option<String> {
    let mut found: Vec<String> = names
        .filter(|n| n.strip_prefix("libLLVM.so.").is_some_and(|v| !v.is_empty()))
        .collect();
    found.sort();
    // Prefer the toolchain's own build (`-nightly` suffix) if several are present.
    let nightly = found.iter().position(|n| n.ends_with("-nightly"));
    match nightly {
        Some(i) => Some(found.swap_remove(i)),
        None => found.into_iter().next(),
    }
}

/// `libLLVM.so.22.1-rust-...` -> 22, which selects bpf-linker's `llvm-22` feature.
fn llvm_major(file: &str) -> Option<u32> {
    let version = file.strip_prefix("libLLVM.so.")?;
    let major: String = version.chars().take_while(|c| c.is_ascii_digit()).collect();
    major.parse().ok()
}

/// Makes `<libdir>/libLLVM.so` a symlink to `file` (what `-lLLVM` resolves at link time).
/// Returns whether it had to create or fix the link. A real file there is left alone.
fn ensure_libllvm_link(libdir: &Path, file: &str) -> Result<bool> {
    let link = libdir.join("libLLVM.so");
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = std::fs::read_link(&link)
                .with_context(|| format!("reading the link {}", link.display()))?;
            if target == Path::new(file) || target == libdir.join(file) {
                return Ok(false);
            }
            std::fs::remove_file(&link)
                .with_context(|| format!("replacing the stale link {}", link.display()))?;
        }
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", link.display())),
    }
    std::os::unix::fs::symlink(file, &link)
        .with_context(|| format!("creating the link {}", link.display()))?;
    Ok(true)
}

fn ensure_debian_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        eprintln!("setup: Debian packages: present");
        return Ok(());
    }
    for (pkg, _, why) in DEBIAN_PACKAGES
        .iter()
        .filter(|(p, _, _)| missing.contains(p))
    {
        eprintln!("setup: missing Debian package {pkg} ({why})");
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages; run as root or: sudo apt-get install {}",
            missing.join(" ")
        );
    }
    cmd::run(
        Command::new("apt-get")
            .args(["-q", "update"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update")?;
    cmd::run(
        Command::new("apt-get")
            // Recommends would pull a GUI and firmware for qemu; none of it is needed.
            .args(["-q", "install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing Debian packages")?;
    Ok(())
}

/// The packages of DEBIAN_PACKAGES that are not installed. Without dpkg (not Debian)
/// we fall back to looking for the commands, and the install step explains itself.
fn missing_packages() -> Result<Vec<&'static str>> {
    let have_dpkg = cmd::which("dpkg-query").is_some();
    let mut missing = Vec::new();
    for &(pkg, command, _) in DEBIAN_PACKAGES {
        let present = if have_dpkg {
            let mut query = Command::new("dpkg-query");
            query.args(["-W", "-f=${Status}", pkg]);
            // dpkg-query exits 1 for a package it has never heard of: that is "missing".
            cmd::stdout(&mut query).is_ok_and(|s| status_is_installed(&s))
        } else {
            cmd::which(command).is_some()
        };
        if !present {
            missing.push(pkg);
        }
    }
    if !missing.is_empty() && !have_dpkg {
        bail!(
            "missing commands from {}; this is not a Debian system, install them by hand",
            missing.join(", ")
        );
    }
    Ok(missing)
}

/// dpkg's `${Status}` is "want flag state": "install ok installed" (or "hold ok installed")
/// means present; "deinstall ok config-files" and friends mean gone.
fn status_is_installed(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    matches!(words.as_slice(), [_, "ok", "installed"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-setup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rust_src_detection() {
        let listing = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(listing, "rust-src"));
        let without = "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(!has_component(without, "rust-src"));
        // `rust-std-...` must not count as `rust` or `rust-src`.
        assert!(!has_component(without, "rust"));
        // `rustup target list --installed` prints bare target names.
        let targets = "x86_64-unknown-linux-gnu\nx86_64-unknown-linux-musl\n";
        assert!(has_component(targets, MUSL_TARGET));
        assert!(!has_component("x86_64-unknown-linux-gnu\n", MUSL_TARGET));
    }

    #[test]
    fn finds_the_versioned_libllvm() {
        let names = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
        ]
        .map(String::from);
        let lib = libllvm_file(names.into_iter());
        assert_eq!(lib.as_deref(), Some("libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.23-rust-1.99.0-nightly"), Some(23));
        assert_eq!(llvm_major("libLLVM.so."), None);
        assert_eq!(libllvm_file(["libLLVM.so".to_string()].into_iter()), None);
    }

    #[test]
    fn libllvm_link_is_created_once_and_fixed_when_stale() {
        let dir = tempdir("link");
        let lib = "libLLVM.so.22.1-rust-1.97.0-nightly";
        std::fs::write(dir.join(lib), b"").unwrap();
        assert!(
            ensure_libllvm_link(&dir, lib).unwrap(),
            "first call creates the link"
        );
        assert!(
            !ensure_libllvm_link(&dir, lib).unwrap(),
            "second call is a no-op"
        );
        assert_eq!(
            std::fs::read_link(dir.join("libLLVM.so")).unwrap(),
            Path::new(lib)
        );

        // After a nightly update the old link dangles: it must be replaced.
        let newer = "libLLVM.so.23.0-rust-1.99.0-nightly";
        std::fs::write(dir.join(newer), b"").unwrap();
        assert!(ensure_libllvm_link(&dir, newer).unwrap());
        assert_eq!(
            std::fs::read_link(dir.join("libLLVM.so")).unwrap(),
            Path::new(newer)
        );

        // A real file named libLLVM.so is somebody's library: leave it.
        std::fs::remove_file(dir.join("libLLVM.so")).unwrap();
        std::fs::write(dir.join("libLLVM.so"), b"real").unwrap();
        assert!(!ensure_libllvm_link(&dir, lib).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dpkg_status_parsing() {
        assert!(status_is_installed("install ok installed"));
        assert!(status_is_installed("hold ok installed"));
        assert!(!status_is_installed("deinstall ok config-files"));
        assert!(!status_is_installed("unknown ok not-installed"));
        assert!(!status_is_installed(""));
    }

    #[test]
    fn cargo_bin_dir_honours_install_root() {
        // Only checks the shape: the environment of the test run decides the prefix.
        assert!(cargo_bin_dir().ends_with("bin"));
    }
}
