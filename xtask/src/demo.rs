//! `cargo xtask demo`: the main job — `ktls-trace top` with the built-in load on a real
//! kernel TLS kernel.
//!
//! Where this host has kprobes and kernel TLS, `top --load` runs right here. Where it has
//! not (the build machines), Debian's kTLS kernel boots under QEMU and `top --load` runs
//! in the guest with the serial console as its terminal: the keys typed here reach it,
//! `q` quits and powers the guest off. Without a terminal (CI logs, a pipe) the demo
//! prints `top --once` snapshots instead, so it still shows something and ends.

use std::{
    io::IsTerminal as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build, cmd, setup,
    vm::{self, Series},
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Skip the guest, even when this host lacks kprobes or kernel TLS (shows the
    /// host's reduced mode).
    #[arg(long, conflicts_with = "vm")]
    pub no_vm: bool,

    /// Use the guest even when this host has kprobes and kernel TLS.
    #[arg(long)]
    pub vm: bool,

    /// Kernel series of the guest.
    #[arg(long, value_enum, default_value = "6.12")]
    pub kernel: Series,

    /// Print `top --once` snapshots instead of the interactive view (the default when
    /// stdin or stdout is not a terminal).
    #[arg(long)]
    pub once: bool,

    /// Seconds each `--once` snapshot covers.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub seconds: u64,
}

pub fn demo_cmd(args: &DemoArgs) -> Result<()> {
    setup::setup(false)?;
    let artifacts = build::build(build::Profile::Release)?;
    let full_host = vm::host_has_kprobes_and_ktls();
    let interactive =
        !args.once && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();

    println!("\n== host: ktls-trace doctor");
    let status = Command::new(&artifacts.ktls_trace)
        .arg("doctor")
        .status()
        .with_context(|| format!("cannot run {}", artifacts.ktls_trace.display()))?;
    println!("(doctor exited {})", status.code().unwrap_or(-1));

    if args.no_vm || (full_host && !args.vm) {
        return host_top(&artifacts.ktls_trace, interactive, args.seconds);
    }
    println!(
        "\n== This host {}: booting Debian's {} kernel in QEMU for `ktls-trace top --load`.",
        if full_host {
            "has kprobes and kernel TLS, but --vm was given"
        } else {
            "has no kprobes or no kernel TLS"
        },
        args.kernel.label()
    );
    if interactive {
        let (rows, cols) = terminal_size().unwrap_or((24, 80));
        println!("   In the guest: `q` quits top and powers the guest off; `?` lists the keys.");
        vm::run_script_interactive(args.kernel, &artifacts, &guest_tty_script(rows, cols))
    } else {
        vm::run_script(
            args.kernel,
            &artifacts,
            &guest_once_script(args.seconds),
            Duration::from_secs(600),
            vm::Vcpus::Serial,
        )
        .map(|_| ())
    }
}

/// `top --load` on this host (it has kprobes and kernel TLS, or --no-vm was given).
fn host_top(ktls_trace: &Path, interactive: bool, seconds: u64) -> Result<()> {
    if !cmd::is_root() {
        bail!("`ktls-trace top` needs root: run `sudo cargo xtask demo`");
    }
    let mut top = Command::new(ktls_trace);
    top.args(["top", "--load"]);
    if !interactive {
        top.args(["--once", "--interval", &seconds.to_string()])
            .stdin(Stdio::null());
    }
    println!("\n== host: {}", cmd::show(&top));
    let status = top
        .status()
        .with_context(|| format!("cannot run {}", ktls_trace.display()))?;
    if !status.success() {
        bail!("ktls-trace top exited {status}");
    }
    Ok(())
}

/// Rows and columns of this terminal (`stty size` reads the terminal on stdin).
fn terminal_size() -> Option<(u16, u16)> {
    let out = Command::new("stty")
        .arg("size")
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(r), Some(c)) if r > 0 && c > 0 => Some((r, c)),
        _ => None,
    }
}

/// The interactive guest plan: the serial console has no size of its own, so it is told
/// this terminal's; kernel messages stay off the screen while `top` draws.
pub fn guest_tty_script(rows: u16, cols: u16) -> String {
    format!(
        r#"dmesg -n 1
stty rows {rows} cols {cols}
export TERM=xterm-256color
echo
echo "== guest $KTLS_TRACE_GUEST ($(uname -r)): ktls-trace doctor"
/opt/kt/ktls-trace doctor
echo
echo "== starting ktls-trace top --load (kernel TLS + sendfile workload) ..."
sleep 3
/opt/kt/ktls-trace top --load
echo "(top exited $?; powering off)"
"#
    )
}

/// The non-interactive guest plan: doctor, then two `top --once` snapshots of the
/// built-in kTLS load, then `verify`.
pub fn guest_once_script(seconds: u64) -> String {
    format!(
        r#"dmesg -n 1
echo
echo "== guest $KTLS_TRACE_GUEST ($(uname -r)): ktls-trace doctor"
/opt/kt/ktls-trace doctor
echo "(doctor exited $?)"
for i in 1 2; do
    echo
    echo "== guest: ktls-trace top --load --once --interval {seconds}"
    /opt/kt/ktls-trace top --load --once --interval {seconds}
done
echo
echo "== guest: ktls-trace verify"
/opt/kt/ktls-trace verify --requests 2 --file-size 2M
echo "(verify exited $?)"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_script_sizes_the_console_then_runs_top_with_load() {
        let s = guest_tty_script(40, 132);
        let stty = s.find("stty rows 40 cols 132").unwrap();
        let top = s.find("/opt/kt/ktls-trace top --load").unwrap();
        assert!(stty < top);
        assert!(s.contains("dmesg -n 1"));
    }

    #[test]
    fn once_script_shows_snapshots_and_verify() {
        let s = guest_once_script(5);
        let doctor = s.find("/opt/kt/ktls-trace doctor").unwrap();
        let top = s.find("top --load --once --interval 5").unwrap();
        let verify = s.find("/opt/kt/ktls-trace verify").unwrap();
        assert!(doctor < top && top < verify);
    }
}
