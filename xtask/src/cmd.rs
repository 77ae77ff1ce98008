//! Small helpers around `std::process::Command` shared by every task: echo what runs,
//! turn a failed exit status into one clear error line, find programs, time things.

use std::{
    ffi::OsStr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root. The xtask always lives in `<root>/xtask`, so the compile-time
/// manifest directory is enough and no `cargo metadata` call is needed for it.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `cargo`, the same one that runs the xtask when there is one (cargo exports `CARGO`),
/// so nested builds use the same toolchain.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// A shell-like rendering of a command for logs and error messages. Cargo is shown as
/// `cargo`, not as the toolchain path `CARGO` points at.
pub fn show(cmd: &Command) -> String {
    let program = cmd.get_program();
    let program = match Path::new(program).file_name() {
        Some(name) if name == "cargo" => name,
        _ => program,
    };
    let mut parts = vec![quote(program)];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a command with inherited stdio after echoing it; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    eprintln!("+ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a command with its stdout and stderr shown as they come and also kept: returns
/// whether it exited successfully and both streams as one text (stderr first), so the
/// caller can read what it did either way.
pub fn run_teed(cmd: &mut Command) -> Result<(bool, String)> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let shown = show(cmd);
    eprintln!("+ {shown}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let out = child.stdout.take().context("stdout")?;
    let err = child.stderr.take().context("stderr")?;
    let to_stdout = std::thread::spawn(move || {
        let mut kept = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stdout(), "{line}");
            kept.push_str(&line);
            kept.push('\n');
        }
        kept
    });
    let mut kept = String::new();
    for line in BufReader::new(err).lines().map_while(Result::ok) {
        let _ = writeln!(std::io::stderr(), "{line}");
        kept.push_str(&line);
        kept.push('\n');
    }
    kept.push_str(&to_stdout.join().unwrap_or_default());
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    Ok((status.success(), kept))
}

/// Runs a command quietly and returns its stdout; on failure the error carries the
/// last lines of stderr, which is where tools explain themselves.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("`{shown}` failed ({}): {}", out.status, tail.join(" | "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when the command starts and exits 0 (output discarded). Used for "is it there?".
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Looks a program up in PATH like a shell would.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// True when this process runs as root. `/proc/self` is owned by the effective uid,
/// which avoids an `unsafe` libc call for one question.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `1.2s`, `3m04s`: short and readable in summary tables.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_quotes_only_what_needs_it() {
        let mut c = Command::new("apt-cache");
        c.args(["search", "--names-only", "^linux-image-6\\.1"]);
        assert_eq!(
            show(&c),
            r"apt-cache search --names-only '^linux-image-6\.1'"
        );
        let mut c = Command::new("/root/.rustup/toolchains/stable/bin/cargo");
        c.args(["fmt", "--check"]);
        assert_eq!(show(&c), "cargo fmt --check");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(fmt_duration(Duration::from_secs(184)), "3m04s");
    }
}
