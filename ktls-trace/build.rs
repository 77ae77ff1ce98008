//! Builds the eBPF object (crate `ktls-trace-ebpf`, target bpfel-unknown-none, nightly +
//! bpf-linker) so that one `cargo build` builds everything; `src/attach/mod.rs` embeds it.
//! `cargo xtask setup` installs what this needs.
//!
//! Why not aya-build's defaults alone: it builds in a target directory under this build
//! script's OUT_DIR, and every profile, target and feature set has an OUT_DIR of its own.
//! `cargo xtask test` builds ktls-trace five ways (clippy with and without the workload
//! generator, the `ci` profile, the static musl build, the host tests), and each built the
//! eBPF crate and `core` from scratch: about 70 s each, a quarter of CI's build time. The
//! object does not depend on any of those (same BPF target, same sources), so it is built
//! once in `<target>/ebpf/` and copied into each OUT_DIR.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // aya-build watches the eBPF crate; the shared layout lives in another directory.
    println!("cargo:rerun-if-changed=../ktls-trace-common/src");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("cargo did not set OUT_DIR")?);
    let shared = shared_dir().join("ebpf");
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // Two build scripts may run at once (two cargo commands, or one building two profiles):
    // one builds and copies while the other waits, then finds the build fresh.
    let lock_path = shared.join(".lock");
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;

    // aya-build takes its output directory from OUT_DIR.
    // SAFETY: the build script is single-threaded here (aya-build starts its threads after
    // reading the environment), so nothing reads the environment while it changes.
    unsafe { env::set_var("OUT_DIR", &shared) };
    let ebpf = aya_build::Package {
        name: "ktls-trace-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ktls-trace-ebpf"),
        ..Default::default()
    };
    let built = aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src + bpf-linker)",
    );
    // SAFETY: as above; restored before anything else runs.
    unsafe { env::set_var("OUT_DIR", &out_dir) };
    built?;
    copy_atomically(
        &shared.join("ktls-trace-ebpf"),
        &out_dir.join("ktls-trace-ebpf"),
    )
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else the workspace's `target/`.
/// A relative `CARGO_TARGET_DIR` is relative to where cargo was started, which a build
/// script cannot know: taken as the workspace root, where cargo usually runs.
fn shared_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace.join(d),
        _ => workspace.join("target"),
    }
}

/// Copies through a temporary name, so that a compile including the object never reads
/// half of it.
fn copy_atomically(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
}
