//! Command-line interface (clap). Every flag has help text; `ktls-trace help <command>`
//! shows it.

use clap::{Args, Parser, Subcommand};

use crate::plan::BackendChoice;

/// See how your server's bytes travel the kernel TLS transmit path: page cache ->
/// sendfile -> kernel TLS encryption -> TCP. Needs root (or CAP_BPF + CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(name = "ktls-trace", version, propagate_version = true)]
#[cfg_attr(not(feature = "load"), command(after_help = NOT_BUILT_HELP))]
pub struct Cli {
    /// More diagnostics on stderr (-v: info, -vv: debug, including the eBPF programs' logs).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live per-process view of the kernel TLS transmit path (interactive; --once for text).
    Top(crate::views::top::TopArgs),
    /// Stream one line (or JSON object) per completed call on the traced path.
    Trace(TraceArgs),
    /// Explain what this kernel supports and which mode `trace`/`top` will run in.
    /// Exits 0 when full tracing is possible, 1 otherwise.
    Doctor(DoctorArgs),
    /// Serve and fetch a file over HTTPS through kernel TLS + sendfile (or another path, see
    /// --mode) and report throughput, errors and CPU per GiB. Exit 1 on any error.
    #[cfg(feature = "load")]
    Load(crate::load::LoadArgs),
    /// Run the built-in load while tracing its server and prove, stage by stage, that the
    /// file went page cache -> sendfile -> kernel TLS -> TCP with no user-space copy.
    /// Exit 0: proven; 1: a stage failed (the path taken is named); 2: not possible here.
    #[cfg(feature = "load")]
    Verify(crate::views::verify::VerifyArgs),
    /// Serve Prometheus metrics (`/metrics`) about the kernel TLS transmit path, for
    /// fleets of servers: payload bytes per path and process, latency, drops, probe states.
    Export(crate::views::export::ExportArgs),
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// One of [`Command`]'s.
    Cli(Box<Cli>),
    /// `generate-assets` (hidden: packaging).
    Assets(crate::assets::AssetsArgs),
    /// A command this build lacks (the static build: `load`, `verify`).
    #[cfg(not(feature = "load"))]
    NotBuilt(String),
}

/// The hidden command that writes completions and man pages (`cargo xtask dist`).
const ASSETS: &str = "generate-assets";

/// The commands of a build without the workload generator that only say so.
#[cfg(not(feature = "load"))]
const NOT_BUILT: [&str; 2] = ["load", "verify"];

/// The command line as parsed: [`Cli`] plus hidden commands. Those are kept out of `Cli`
/// itself because completions and man pages are generated from `Cli::command()`, and
/// clap_complete's zsh script lists hidden commands too.
pub fn command() -> clap::Command {
    use clap::{Args as _, CommandFactory as _};
    let assets = crate::assets::AssetsArgs::augment_args(clap::Command::new(ASSETS));
    #[allow(unused_mut)] // Only the build without the workload generator adds more.
    let mut cmd = Cli::command().subcommand(assets.hide(true));
    #[cfg(not(feature = "load"))]
    for name in NOT_BUILT {
        // Anything after the name (`--help` included) gets the same one-line refusal
        // instead of a parser error about some flag.
        cmd = cmd.subcommand(
            clap::Command::new(name)
                .about("Not in this build (no workload generator); exits 2")
                .hide(true)
                .disable_help_flag(true)
                .disable_version_flag(true)
                .arg(
                    clap::Arg::new("args")
                        .num_args(0..)
                        .trailing_var_arg(true)
                        .allow_hyphen_values(true),
                ),
        );
    }
    cmd
}

/// Parses the process's arguments; a parse error or `--help` exits as clap does (2 or 0).
pub fn parse() -> Parsed {
    use clap::FromArgMatches as _;
    let matches = command().get_matches();
    let parsed = match matches.subcommand() {
        Some((ASSETS, m)) => crate::assets::AssetsArgs::from_arg_matches(m).map(Parsed::Assets),
        #[cfg(not(feature = "load"))]
        Some((name, _)) if NOT_BUILT.contains(&name) => Ok(Parsed::NotBuilt(name.to_string())),
        _ => Cli::from_arg_matches(&matches).map(|c| Parsed::Cli(Box::new(c))),
    };
    parsed.unwrap_or_else(|e| e.exit())
}

/// What `ktls-trace --help` adds in a build without the workload generator.
#[cfg(not(feature = "load"))]
const NOT_BUILT_HELP: &str = "This is the static build: it has no workload generator (`load`, \
`verify` and `top --load`), because the ktls crate does not build with musl yet. Use the \
glibc build (cargo build) for those.";

/// The refusal of `load`, `verify` and `top --load` in a build without the workload
/// generator: a usage error (exit 2), one line.
#[cfg(not(feature = "load"))]
pub fn not_built(what: &str) -> anyhow::Error {
    anyhow::Error::new(crate::procs::UsageError::Other(format!(
        "this ktls-trace was built without the workload generator (the static build: the \
         ktls crate does not build with musl yet); use the glibc build for `{what}`"
    )))
}

/// Which processes to trace; filtering happens in the kernel.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Trace only these processes (and all their threads); repeat or separate with commas.
    #[arg(short, long = "pid", value_name = "PID,...", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Trace only processes with this name, or threads with this name (the kernel keeps
    /// 15 bytes of a name): `--comm envoy` also catches its `wrk:worker_N` threads.
    #[arg(short, long, value_name = "NAME", value_parser = comm_name)]
    pub comm: Option<String>,

    /// Probe backend: kprobes (full picture) or tracepoints (works without kprobes, no
    /// kernel TLS visibility). `auto` picks kprobes when the kernel has them.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Stop after this many seconds (default: until Ctrl-C, SIGTERM or the traced processes exit).
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// One JSON object per line (schema: docs/event-schema.md); the last line is the summary.
    #[arg(long)]
    pub json: bool,

    /// Also measure what the tracer's own BPF programs cost in the kernel: the summary gives
    /// runs and ns per run for each probe's programs (BPF run-time statistics, Linux 5.8+;
    /// counting adds two clock reads to every BPF program run on the system while it is on).
    #[arg(long)]
    pub cost: bool,

    #[command(flatten)]
    pub ring: RingArgs,
}

/// The size of the ring buffer events travel through (trace and top).
#[derive(Debug, Clone, Args)]
pub struct RingArgs {
    /// Ring buffer size in MiB (a power of two); raise it if drops are reported.
    #[arg(long, value_name = "MIB", default_value_t = 8)]
    pub ring_mib: u32,

    /// Ring buffer size in KiB instead (a power of two from 4): small enough to lose
    /// events on purpose, which is how the tests prove that drops are counted and shown.
    #[arg(long, value_name = "KIB", hide = true, conflicts_with = "ring_mib")]
    pub ring_kib: Option<u32>,
}

impl RingArgs {
    /// The size in bytes, or why it cannot be: a BPF ring buffer is a power of two of
    /// whole pages.
    pub fn bytes(&self) -> Result<u32, crate::procs::UsageError> {
        use crate::procs::UsageError;
        if let Some(kib) = self.ring_kib {
            if !kib.is_power_of_two() || !(4..=1 << 20).contains(&kib) {
                return Err(UsageError::Other(
                    "--ring-kib must be a power of two between 4 and 1048576".into(),
                ));
            }
            return Ok(kib << 10);
        }
        if !self.ring_mib.is_power_of_two() || self.ring_mib > 1024 {
            return Err(UsageError::Other(
                "--ring-mib must be a power of two between 1 and 1024".into(),
            ));
        }
        Ok(self.ring_mib << 20)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The kernel keeps this many bytes of a task's name (`TASK_COMM_LEN` 16, with the NUL).
const COMM_MAX: usize = ktls_trace_common::COMM_LEN - 1;

/// `--comm`: a name the kernel can hold. A longer one could never match, since the kernel
/// cuts every name to 15 bytes; the error says which 15 to give instead.
fn comm_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("a command name is needed".into());
    }
    if name.len() > COMM_MAX {
        let cut = (0..=COMM_MAX)
            .rev()
            .find(|&i| name.is_char_boundary(i))
            .unwrap_or(0);
        return Err(format!(
            "{} bytes, but the kernel keeps only the first {COMM_MAX} of a name \
             (a process started as {name:?} is called {:?} there)",
            name.len(),
            &name[..cut]
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_commands_parse_but_stay_out_of_cli() {
        use clap::CommandFactory as _;
        let m = command()
            .try_get_matches_from(["ktls-trace", "generate-assets", "--out", "/x"])
            .expect("generate-assets parses");
        assert_eq!(m.subcommand_name(), Some("generate-assets"));
        // Completions and man pages come from `Cli::command()`: nothing hidden in it.
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert!(!names.iter().any(|n| n == "generate-assets"), "{names:?}");
        assert_eq!(names.iter().any(|n| n == "load"), cfg!(feature = "load"));
        assert_eq!(names.iter().any(|n| n == "verify"), cfg!(feature = "load"));
        // Without the workload generator its commands still parse, whatever follows.
        if !cfg!(feature = "load") {
            for args in [&["load", "--help"][..], &["verify", "--mode", "x", "-v"]] {
                let m = command()
                    .try_get_matches_from(std::iter::once("ktls-trace").chain(args.iter().copied()))
                    .expect("parses");
                assert_eq!(m.subcommand_name(), Some(args[0]));
            }
        }
    }

    #[test]
    fn comm_names_the_kernel_can_hold() {
        assert_eq!(comm_name("envoy").as_deref(), Ok("envoy"));
        assert_eq!(
            comm_name("ktls-load-srv01").as_deref(),
            Ok("ktls-load-srv01")
        );
        assert!(comm_name("").is_err());
        let e = comm_name("ktls-load-server").unwrap_err();
        assert!(e.contains(r#"called "ktls-load-serve" there"#), "{e}");
        // Cut on a character boundary: 14 ASCII bytes, then a 2-byte character.
        let e = comm_name("abcdefghijklmné").unwrap_err();
        assert!(e.contains(r#""abcdefghijklmn""#), "{e}");
    }
}
