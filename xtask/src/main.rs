//! `cargo xtask`: the project's developer tasks, one module per concern.
//!
//! - `setup`   installs the build's toolchain pieces and Debian packages when missing;
//! - `build`   builds the workspace (with the eBPF object) and the test executables;
//! - `dist`    the static binary (musl) with completions, man pages and the systemd unit;
//! - `test`    fmt, clippy, host tests, then every test again inside QEMU guests;
//! - `vm-test` / `vm-shell` run the real kTLS kernels (see docs/testing.md);
//! - `demo`    `ktls-trace top --load` on a kTLS kernel (this host, or a QEMU guest);
//! - `bench`   transmit paths and tracing overhead, as ratios, in a kTLS guest;
//! - `record`  real event streams for the replay tests, from the guests;
//! - `matrix`  what `ktls-trace doctor` says on every kernel of the matrix.

mod bench;
mod build;
mod cmd;
mod demo;
mod dist;
mod matrix;
mod record;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for ktls-trace (setup, build, dist, test, vm-test, vm-shell, demo, bench, record, matrix)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build needs (nightly rust-src, bpf-linker, Debian packages) when missing.
    Setup(setup::SetupArgs),
    /// Run setup, build the workspace and the test executables, list the test executables.
    Build(build::BuildArgs),
    /// The static x86_64 binary (musl, eBPF object inside, stripped) with shell completions,
    /// man pages and an example systemd unit, in target/dist/ (and a .tar.gz of it).
    Dist,
    /// Everything CI runs: fmt, clippy, host tests (as root), then vm-test on 5.10, 6.1, 6.12
    /// and the newest Debian kernel.
    Test(test::TestArgs),
    /// Run every test executable inside QEMU guests booting Debian's kernels (the matrix).
    VmTest(vm::VmTestArgs),
    /// Boot a guest with the freshly built binaries and give an interactive shell (Ctrl-A X quits).
    VmShell(vm::VmShellArgs),
    /// The main job: `ktls-trace top` with the built-in load on a kTLS kernel (here, or in a QEMU guest).
    Demo(demo::DemoArgs),
    /// Benchmarks in a kTLS guest: the four transmit paths and the tracers' overhead, as ratios.
    Bench(bench::BenchArgs),
    /// Record real event streams (verify --record, every load mode) in the guests, for the
    /// replay tests (ktls-trace/fixtures/).
    Record(record::RecordArgs),
    /// What `ktls-trace doctor` says on every kernel of the matrix (docs/kernel-support.md).
    Matrix(matrix::MatrixArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::setup_cmd(&args),
        Command::Build(args) => build::build_cmd(&args),
        Command::Dist => dist::dist_cmd(),
        Command::Test(args) => test::test_cmd(&args),
        Command::VmTest(args) => vm::vm_test_cmd(&args),
        Command::VmShell(args) => vm::vm_shell_cmd(&args),
        Command::Demo(args) => demo::demo_cmd(&args),
        Command::Bench(args) => bench::bench_cmd(&args),
        Command::Record(args) => record::record_cmd(&args),
        Command::Matrix(args) => matrix::matrix_cmd(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` keeps the whole context chain on one line.
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
