//! `cargo xtask record`: records real event streams for the replay tests. In a guest of
//! each kernel, `ktls-trace verify --record` runs every load mode once and writes the
//! events it judged and what the load reported; the files are printed on the console
//! between markers and written to `ktls-trace/fixtures/<major.minor>/<mode>.jsonl` (named
//! after the kernel they were recorded on, which `latest` is not for long), where the
//! replay test (ktls-trace/src/views/verify/replay.rs) feeds them to `top`'s model and
//! `verify`'s judge. Run it again when the event format or a kernel era changes.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    cmd,
    vm::{self, KernelChoice},
};

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Which kernel series to record on.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
}

/// The guest plan: every mode, one small load each.
const SCRIPT: &str = r#"dmesg -n 1
KT=/opt/kt/ktls-trace
for m in $("$KT" load --list-modes); do
    "$KT" verify --mode "$m" --requests 2 --file-size 256K --json --record "/tmp/$m.jsonl" \
        >/tmp/verify.out 2>/tmp/verify.err
    echo "KT-RECORD verify $m exited $?: $(tail -n 1 /tmp/verify.err)"
    if [ -s "/tmp/$m.jsonl" ]; then
        echo "KT-FIXTURE-BEGIN $m"
        cat "/tmp/$m.jsonl"
        echo "KT-FIXTURE-END $m"
    fi
done
"#;

pub fn record_cmd(args: &RecordArgs) -> Result<()> {
    let root = cmd::workspace_root().join("ktls-trace/fixtures");
    vm::script_on_each(
        args.kernel,
        SCRIPT,
        Duration::from_secs(1800),
        |series, console| {
            let label = series.label();
            let files = fixtures(console);
            if files.is_empty() {
                bail!(
                    "the {label} guest recorded nothing (console: target/vm/{label}/console-demo.log)"
                );
            }
            for (mode, text) in files {
                let version = kernel_version(&text)
                    .with_context(|| format!("the {label} recording of {mode} names no kernel"))?;
                let dir = root.join(version);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                write(&dir.join(format!("{mode}.jsonl")), &text)?;
            }
            Ok(())
        },
    )
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "record: wrote {} ({} lines)",
        path.display(),
        text.lines().count()
    );
    Ok(())
}

/// "7.3" from the recording's header (`{"fixture":{"kernel":"7.3.4+deb13-cloud-amd64",...}}`).
fn kernel_version(text: &str) -> Option<String> {
    let header: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
    let release = header.pointer("/fixture/kernel")?.as_str()?;
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some(format!("{}.{}", parts.next()?, parts.next()?))
}

/// The files between `KT-FIXTURE-BEGIN <mode>` and `KT-FIXTURE-END <mode>` markers.
pub fn fixtures(console: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in console {
        let line = line.trim_end_matches('\r');
        if let Some(mode) = line.strip_prefix("KT-FIXTURE-BEGIN ") {
            current = Some((mode.trim().to_string(), String::new()));
        } else if let Some(mode) = line.strip_prefix("KT-FIXTURE-END ") {
            if let Some((m, text)) = current.take()
                && m == mode.trim()
            {
                out.push((m, text));
            }
        } else if let Some((_, text)) = &mut current {
            // Only JSON lines: a kernel message on the console does not belong to a file.
            if line.starts_with('{') {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_cut_from_the_console() {
        let console: Vec<String> = [
            "KT-RECORD verify ktls-sendfile exited 0: ",
            "KT-FIXTURE-BEGIN ktls-sendfile",
            "{\"fixture\":{}}\r",
            "[   12.3] some kernel message",
            "{\"probe\":\"tls_sw_sendmsg\"}",
            "KT-FIXTURE-END ktls-sendfile",
            "KT-FIXTURE-BEGIN cut-off",
            "{\"fixture\":{}}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = fixtures(&console);
        assert_eq!(f.len(), 1, "an unfinished file is not kept");
        assert_eq!(f[0].0, "ktls-sendfile");
        assert_eq!(f[0].1, "{\"fixture\":{}}\n{\"probe\":\"tls_sw_sendmsg\"}\n");
        assert_eq!(
            kernel_version("{\"fixture\":{\"kernel\":\"7.3.4+deb13-cloud-amd64\"}}\n").as_deref(),
            Some("7.3")
        );
        assert_eq!(kernel_version(&f[0].1), None);
    }
}
