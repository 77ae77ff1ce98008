//! `ktls-trace generate-assets --out DIR` (hidden): shell completions and man pages,
//! generated from the clap definitions of this very binary, so that they describe exactly
//! the commands it has (the static build lacks `load` and `verify`). `cargo xtask dist`
//! runs it with the binary it ships; the xtask itself then needs no dependency on this
//! crate (which would build the eBPF object inside the xtask).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use crate::cli::Cli;

/// Write shell completions and man pages generated from this binary's command line
/// (packaging: `cargo xtask dist` runs it with the binary it ships).
#[derive(Debug, Clone, Args)]
pub struct AssetsArgs {
    /// Directory to write `completions/` and `man/` into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// The shells completions are written for, with the file names their packagers expect.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes the assets and prints every file written, one per line on stdout.
pub fn run(args: &AssetsArgs) -> anyhow::Result<ExitCode> {
    let files = generate(&args.out)?;
    let mut out = std::io::stdout().lock();
    for f in files {
        writeln!(out, "{}", f.display()).context("writing to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `<out>/completions/{ktls-trace.bash, _ktls-trace, ktls-trace.fish}` and
/// `<out>/man/ktls-trace.1` plus one `ktls-trace-<command>.1` per visible command.
/// Returns the files written, sorted.
pub fn generate(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let completions = out.join("completions");
    let man = out.join("man");
    for dir in [&completions, &man] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut files = Vec::new();
    for shell in SHELLS {
        let mut cmd = Cli::command();
        let file = clap_complete::generate_to(shell, &mut cmd, "ktls-trace", &completions)
            .with_context(|| {
                format!(
                    "writing the {shell} completions to {}",
                    completions.display()
                )
            })?;
        files.push(file);
    }
    // One page per visible command and the main page; hidden commands (this one, and the
    // refusing stand-ins of a build without the workload generator) get none.
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages to {}", man.display()))?;
    for entry in std::fs::read_dir(&man).with_context(|| format!("reading {}", man.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", man.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "1") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[PathBuf], dir: &str) -> Vec<String> {
        files
            .iter()
            .filter(|f| {
                f.parent()
                    .and_then(Path::file_name)
                    .is_some_and(|d| d == dir)
            })
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }

    #[test]
    fn completions_and_man_pages_cover_the_visible_commands_only() {
        let dir = std::env::temp_dir().join(format!("ktls-trace-assets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = generate(&dir).expect("generate");

        assert_eq!(
            names(&files, "completions"),
            ["_ktls-trace", "ktls-trace.bash", "ktls-trace.fish"]
        );
        let mut want = vec!["ktls-trace.1", "ktls-trace-doctor.1", "ktls-trace-export.1"];
        if cfg!(feature = "load") {
            want.extend(["ktls-trace-load.1", "ktls-trace-verify.1"]);
        }
        want.extend(["ktls-trace-top.1", "ktls-trace-trace.1"]);
        want.sort();
        assert_eq!(names(&files, "man"), want);

        let read = |p: &str| std::fs::read_to_string(dir.join(p)).expect(p);
        // Real content: the subcommands and their flags, and never the hidden command.
        let bash = read("completions/ktls-trace.bash");
        for needle in ["doctor", "export", "--comm", "--once"] {
            assert!(bash.contains(needle), "bash completions lack {needle}");
        }
        let zsh = read("completions/_ktls-trace");
        assert!(zsh.contains("#compdef ktls-trace"), "{zsh}");
        let fish = read("completions/ktls-trace.fish");
        assert!(fish.contains("complete -c ktls-trace"), "{fish}");
        for text in [&bash, &zsh, &fish] {
            assert!(
                !text.contains("generate-assets"),
                "a hidden command: {text}"
            );
        }
        let top = read("man/ktls-trace-top.1");
        assert!(top.starts_with(".ie \\n(.g .ds Aq"), "not roff: {top}");
        assert!(top.contains("\\-\\-once"), "{top}");
        let main = read("man/ktls-trace.1");
        assert!(main.contains("ktls\\-trace\\-trace(1)"), "{main}");
        assert!(!main.contains("generate\\-assets"), "{main}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
