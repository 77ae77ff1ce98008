//! Builds the eBPF object (crate `ktls-trace-ebpf`, target bpfel-unknown-none, nightly +
//! bpf-linker) so that one `cargo build` builds everything; `src/bpf.rs` embeds it.
//! `cargo xtask setup` installs what this needs.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // aya-build watches the eBPF crate; the shared layout lives in another directory.
    println!("cargo:rerun-if-changed=../ktls-trace-common/src");
    let ebpf = aya_build::Package {
        name: "ktls-trace-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ktls-trace-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src + bpf-linker)",
    )
}
