//! `cargo xtask demo`: build release binaries and show the tool at work.
//!
//! Until `top` exists this is `doctor` plus a few seconds of `trace` on a workload the
//! demo starts itself, first on this host, then (when this host cannot show kernel TLS,
//! like the build machines) inside a QEMU guest running a kTLS kernel. The body is
//! `host_demo` + `guest_script`: a later issue swaps them for the `top` TUI.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    build, cmd, setup,
    vm::{self, Series},
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Skip the guest part, even when this host lacks kprobes or kernel TLS.
    #[arg(long, conflicts_with = "vm")]
    pub no_vm: bool,

    /// Run the guest part even when this host has kprobes and kernel TLS.
    #[arg(long)]
    pub vm: bool,

    /// Kernel series of the guest part.
    #[arg(long, value_enum, default_value = "6.12")]
    pub kernel: Series,

    /// Seconds of `trace` to show.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub seconds: u64,
}

pub fn demo_cmd(args: &DemoArgs) -> Result<()> {
    setup::setup(false)?;
    let artifacts = build::build(true)?;
    let full_host = vm::host_has_kprobes_and_ktls();

    host_demo(
        &artifacts.ktls_trace,
        &artifacts.ktls_workload,
        full_host,
        args.seconds,
    )?;

    if args.no_vm || (full_host && !args.vm) {
        return Ok(());
    }
    println!(
        "\n== This host {}; booting Debian's {} kernel in QEMU to show kernel TLS.",
        if full_host {
            "has kprobes and kernel TLS"
        } else {
            "has no kprobes or no kernel TLS"
        },
        args.kernel.label()
    );
    // TCG is slow to boot and to load BTF; ten minutes is far more than it needs.
    vm::run_script(
        args.kernel,
        &artifacts,
        &guest_script(args.seconds),
        Duration::from_secs(600),
    )
}

/// doctor, then `trace` while the demo's own workload runs, on this host.
fn host_demo(trace: &Path, workload: &Path, full_host: bool, seconds: u64) -> Result<()> {
    println!("\n== host: {} doctor", trace.display());
    let status = Command::new(trace)
        .arg("doctor")
        .status()
        .with_context(|| format!("cannot run {}", trace.display()))?;
    println!("(doctor exited {})", status.code().unwrap_or(-1));

    if !cmd::is_root() {
        println!("(skipping `trace` on the host: it needs root)");
        return Ok(());
    }
    let mode = if full_host {
        "ktls-sendfile"
    } else {
        "plain-sendfile"
    };
    println!(
        "\n== host: ktls-trace trace --comm ktls-workload --duration {seconds}, \
         while `ktls-workload {mode} 4000000` runs"
    );
    let mut tracer = Command::new(trace)
        .args(["trace", "--comm", "ktls-workload", "--duration"])
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} trace", trace.display()))?;
    // Let the probes attach before the first send.
    thread::sleep(Duration::from_millis(1500));
    let hard_stop = Instant::now() + Duration::from_secs(seconds + 30);
    loop {
        if tracer.try_wait().context("waiting for trace")?.is_some() {
            break;
        }
        if Instant::now() > hard_stop {
            println!("(trace did not stop after {seconds}s; stopping it)");
            let _ = tracer.kill();
            let _ = tracer.wait();
            break;
        }
        let ok = cmd::succeeds(
            Command::new(workload)
                .args([mode, "4000000", "--no-wait"])
                .stderr(Stdio::inherit()),
        );
        if !ok {
            println!("(ktls-workload {mode} failed; stopping the workload)");
            let _ = tracer.wait();
            break;
        }
        thread::sleep(Duration::from_millis(700));
    }
    Ok(())
}

/// The guest's plan: the same two steps with kernel TLS. Output goes to the serial
/// console, which the host prints live.
pub fn guest_script(seconds: u64) -> String {
    format!(
        r#"echo
echo "== guest $KTLS_TRACE_GUEST ($(uname -r)): ktls-trace doctor"
/opt/kt/ktls-trace doctor
echo "(doctor exited $?)"
echo
echo "== guest: ktls-trace trace --comm ktls-workload --duration {seconds}, while 'ktls-workload ktls-sendfile 4000000' runs"
/opt/kt/ktls-trace trace --comm ktls-workload --duration {seconds} &
tracer=$!
sleep 2
while kill -0 $tracer 2>/dev/null; do
    /opt/kt/ktls-workload ktls-sendfile 4000000 --no-wait >/dev/null || {{ echo "(ktls-workload failed)"; break; }}
    sleep 1
done
wait $tracer
echo "(trace exited $?)"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_script_runs_doctor_then_trace_with_ktls_workload() {
        let s = guest_script(5);
        let doctor = s.find("/opt/kt/ktls-trace doctor").unwrap();
        let trace = s
            .find("/opt/kt/ktls-trace trace --comm ktls-workload --duration 5 &")
            .unwrap();
        assert!(doctor < trace);
        assert!(s.contains("/opt/kt/ktls-workload ktls-sendfile 4000000 --no-wait"));
    }
}
