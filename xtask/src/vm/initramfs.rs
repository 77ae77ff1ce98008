//! The guest's initramfs: busybox, the kernel module subset, the project's binaries and
//! test executables with their shared libraries, and a generated `/init`.
//!
//! Layout (tests rely on it: they find the binaries next to their own parent directory,
//! or through `KTLS_TRACE_BIN_DIR`):
//!
//! ```text
//! /init                    generated shell script (see `init_script`)
//! /bin/busybox + applets   /sbin/modprobe too: the kernel's request_module runs it
//! /lib/modules/<release>/  module subset with its depmod index
//! /opt/kt/ktls-trace       stripped copies of the binaries
//! /opt/kt/ktls-workload
//! /opt/kt/dist/ktls-trace  the static binary of `cargo xtask dist`, as shipped (test images)
//! /opt/kt/deps/<exe>       every test executable (cargo's `name-hash` file names)
//! /opt/kt/plan             the test executables to run, one per line
//! /opt/kt/run-tests        runs the plan with KT-BEGIN / KT-END markers
//! /usr/bin/tmux, bash      a terminal for the test of `top`'s interactive view
//! /usr/bin/curl, openssl   real TLS clients for the load server's tests
//! /usr/bin/setpriv         util-linux's: a non-root user with chosen capabilities
//! /lib/terminfo, /usr/lib/locale/C.utf8   what tmux needs to draw UTF-8 in its panes
//! /lib*/...                the glibc libraries `ldd` names, at their host paths
//! /usr/bin/bpftrace        the bench only (`Contents::unpacked`, vm/tools.rs): with the
//!                          libraries unpacked next to it at their package paths
//! /usr/bin/prometheus      the kTLS test guests only (`Contents::unpacked`): a real
//! /usr/bin/promtool        Prometheus scraping `export` (tests/tests/export.rs)
//! ```
//!
//! The archive is an uncompressed newc cpio: it is built in a second and the emulated
//! guest does not spend time decompressing it.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{Series, kernel::Kernel, tools::Unpacked};
use crate::{build::TestExe, cmd};

/// What the guest does after booting.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Run the test executables, then power off.
    Tests(TestRun),
    /// An interactive shell on the serial console; power off when it exits.
    Shell,
    /// Run this shell script (e.g. the demo), then power off.
    Script(String),
    /// Run this shell script with the serial console as its controlling terminal (for a
    /// TUI: `top`), then power off.
    Interactive(String),
}

/// Which tests a guest runs, and how.
#[derive(Debug, Clone, Default)]
pub struct TestRun {
    /// Only the tests whose names contain one of these (they need no shell quoting).
    pub filters: Vec<String>,
    /// The soak's length in seconds instead of its per-kernel default.
    pub soak_secs: Option<u64>,
}

impl TestRun {
    /// The guest's command line for this run.
    fn command(&self) -> String {
        let mut cmd = String::new();
        if let Some(s) = self.soak_secs {
            cmd.push_str(&format!("KTLS_TRACE_SOAK_SECS={s} "));
        }
        cmd.push_str("/opt/kt/run-tests");
        for f in &self.filters {
            cmd.push(' ');
            cmd.push_str(f);
        }
        cmd.push_str(" </dev/null");
        cmd
    }
}

pub struct Contents<'a> {
    pub kernel: &'a Kernel,
    pub ktls_trace: &'a Path,
    pub ktls_workload: &'a Path,
    /// The static binary of `cargo xtask dist` (already stripped, needs no libraries).
    pub dist: Option<&'a Path>,
    pub tests: &'a [TestExe],
    pub plan: Plan,
    /// Seconds one test executable may run in the guest before it is killed, so one hang
    /// does not eat the whole guest's time budget.
    pub exe_timeout_secs: u64,
    /// Tools unpacked from Debian packages (bpftrace for the bench, about 200 MB with its
    /// libraries; prometheus and promtool for the kTLS test guests, about 100 MB), so only
    /// the images that need them get them.
    pub unpacked: &'a [&'a Unpacked],
}

/// Builds `<work>/initramfs-<name>.cpio` from a fresh `<work>/root-<name>/`.
pub fn build(contents: &Contents<'_>, work: &Path, name: &str) -> Result<PathBuf> {
    let root = work.join(format!("root-{name}"));
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "root",
        "etc",
        "run",
        "lib/modules",
        "opt/kt/deps",
        "opt/kt/dist",
    ] {
        mkdir(&root.join(dir))?;
    }

    let busybox = install_busybox(&root)?;
    let mut elves = vec![busybox];

    // Modules: the prepared subset, copied as is (cp -a keeps the tree and is quick).
    let modules = contents
        .kernel
        .initrd_modules
        .join("lib/modules")
        .join(&contents.kernel.release);
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(&modules)
            .arg(root.join("lib/modules")),
    )
    .context("copying the kernel modules")?;

    let kt = root.join("opt/kt");
    strip_copy(contents.ktls_trace, &kt.join("ktls-trace"))?;
    strip_copy(contents.ktls_workload, &kt.join("ktls-workload"))?;
    elves.push(contents.ktls_trace.to_path_buf());
    elves.push(contents.ktls_workload.to_path_buf());
    if let Some(dist) = contents.dist {
        // Copied as shipped: no strip, and no libraries (it has none; tests/tests/dist.rs
        // checks that it runs with nothing else in its root).
        let dest = kt.join("dist/ktls-trace");
        fs::copy(dist, &dest).with_context(|| format!("copying {}", dist.display()))?;
    }
    let mut plan = String::new();
    for t in contents.tests {
        strip_copy(&t.path, &kt.join("deps").join(t.file_name()))?;
        elves.push(t.path.clone());
        plan.push_str(&t.file_name());
        plan.push('\n');
    }
    write(&kt.join("plan"), &plan, false)?;
    write(
        &kt.join("run-tests"),
        &run_tests_script(contents.exe_timeout_secs),
        true,
    )?;
    elves.extend(install_terminal(&root)?);
    copy_shared_libraries(&elves, &root, None)?;
    for &u in contents.unpacked {
        let mut exes = Vec::new();
        for exe in &u.executables {
            let dest = root.join(exe);
            if let Some(parent) = dest.parent() {
                mkdir(parent)?;
            }
            let src = u.root.join(exe);
            fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
            exes.push(src);
        }
        copy_shared_libraries(&exes, &root, Some(u))?;
    }

    // Enough of /etc for glibc: `localhost` resolves from /etc/hosts without DNS, and
    // uid 0 has a name and a home.
    write(
        &root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
        false,
    )?;
    write(
        &root.join("etc/nsswitch.conf"),
        "hosts: files\npasswd: files\ngroup: files\n",
        false,
    )?;
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        false,
    )?;
    write(&root.join("etc/group"), "root:x:0:\n", false)?;

    let plan_cmd = match &contents.plan {
        Plan::Tests(run) => run.command(),
        Plan::Shell => SHELL_PLAN.to_string(),
        Plan::Script(script) => {
            write(&kt.join("plan.sh"), script, true)?;
            "sh /opt/kt/plan.sh </dev/null".to_string()
        }
        Plan::Interactive(script) => {
            write(&kt.join("plan.sh"), script, true)?;
            // cttyhack makes the console the controlling tty: keys reach the program.
            "setsid cttyhack sh /opt/kt/plan.sh".to_string()
        }
    };
    write(
        &root.join("init"),
        &init_script(contents.kernel.series, &plan_cmd),
        true,
    )?;

    let archive = work.join(format!("initramfs-{name}.cpio"));
    pack_cpio(&root, &archive)?;
    Ok(archive)
}

const SHELL_PLAN: &str = r#"echo
echo "ktls-trace guest $KTLS_TRACE_GUEST: binaries in /opt/kt, tests in /opt/kt/deps."
echo "  /opt/kt/run-tests [libtest args]   runs the test plan (e.g. /opt/kt/run-tests --nocapture)"
echo "  exit (or Ctrl-A X) powers the guest off"
setsid cttyhack sh -l"#;

/// `/init`: mounts, `lo`, `modprobe tls` (on a series with kernel TLS), the plan, power
/// off. Lines starting with `KT-` are markers for the host (vm/report.rs parses them).
pub fn init_script(series: Series, plan_cmd: &str) -> String {
    let tls = if series.has_ktls() {
        r#"if modprobe tls; then echo "KT-TLS loaded"; else echo "KT-TLS-FAILED modprobe tls exited $?"; fi"#
    } else {
        // Not a failure: the series is declared without it (vm/series.rs), and the tests
        // decide what they can check without it (KT-SKIP).
        r#"echo "KT-TLS none (kernel built without CONFIG_TLS)""#
    };
    format!(
        r#"#!/bin/sh
# /init of a ktls-trace test guest, generated by `cargo xtask` (xtask/src/vm/initramfs.rs).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1
export KTLS_TRACE_BIN_DIR=/opt/kt KTLS_TRACE_GUEST={guest} LANG=C.UTF-8
mnt() {{ mkdir -p "$3"; mount -t "$1" "$2" "$3" || echo "KT-WARN mount -t $1 $3 failed"; }}
mnt proc proc /proc
mnt sysfs sysfs /sys
mnt devtmpfs devtmpfs /dev
# Pseudo-terminals, for tmux in the test of top's interactive view.
mnt devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1
mnt tmpfs tmpfs /tmp
mnt tracefs tracefs /sys/kernel/tracing
mnt debugfs debugfs /sys/kernel/debug
mnt bpf bpf /sys/fs/bpf
ip link set lo up || echo "KT-WARN cannot bring lo up"
echo "KT-BOOTED guest={guest} kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)s"
# No udev here to load the CPU's crypto drivers from its modalias: without AES-NI the
# 6.1 kernel's TLS would get gcm(aes) from C AES and look twice as expensive.
modprobe aesni_intel 2>/dev/null || echo "KT-WARN no aesni_intel"
{tls}
# What is loaded before the first test (decompressed on the host, see vm/kernel.rs).
echo "KT-MODULES $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
cd /tmp
{plan_cmd}
echo "KT-DONE uptime=$(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
"#,
        guest = series.label(),
    )
}

/// `/opt/kt/run-tests`: every executable of /opt/kt/plan with `--include-ignored` (the
/// guest-only tests are `#[ignore]`d on the host) and one test at a time (they trace the
/// whole guest). Extra arguments go to every executable.
pub fn run_tests_script(exe_timeout_secs: u64) -> String {
    format!(
        r#"#!/bin/sh
# Runs the test plan with markers the host parses: KT-BEGIN <exe> / KT-END <exe> rc=<n>.
# usage: /opt/kt/run-tests [libtest args...]
limit=${{KT_EXE_TIMEOUT:-{exe_timeout_secs}}}
cd /tmp
while read -r exe; do
    [ -n "$exe" ] || continue
    echo "KT-BEGIN $exe"
    timeout "$limit" "/opt/kt/deps/$exe" --include-ignored --test-threads=1 "$@"
    echo "KT-END $exe rc=$?"
done < /opt/kt/plan
"#
    )
}

/// The static busybox and a symlink per applet (all of them: the list is cheap and a
/// developer in vm-shell gets a complete toolbox). Returns the host path of busybox.
fn install_busybox(root: &Path) -> Result<PathBuf> {
    let host = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| cmd::which("busybox"))
        .context("busybox not found; run `cargo xtask setup` (package busybox-static)")?;
    let dest = root.join("bin/busybox");
    fs::copy(&host, &dest).with_context(|| format!("copying {}", host.display()))?;
    let list = cmd::stdout(Command::new(&host).arg("--list"))?;
    for applet in list.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", &root.join("bin").join(applet))?;
    }
    for applet in [
        "sh", "mount", "modprobe", "ip", "poweroff", "cat", "setsid", "cttyhack", "timeout",
    ] {
        if !root.join("bin").join(applet).exists() {
            bail!(
                "{} lacks the `{applet}` applet the guest needs",
                host.display()
            );
        }
    }
    // The kernel runs /sbin/modprobe (CONFIG_MODPROBE_PATH) to load crypto on demand.
    for applet in ["modprobe", "insmod", "poweroff", "init"] {
        symlink("/bin/busybox", &root.join("sbin").join(applet))?;
    }
    Ok(host)
}

/// tmux, bash, curl, openssl and setpriv from the host (`cargo xtask setup` installs
/// them; setpriv comes with util-linux, which every Debian has); tmux so that the test of
/// `top`'s interactive view drives a real terminal on the kTLS kernels too, not only on the
/// build machine, where there is no kTLS to show. tmux needs the terminfo entry of its
/// panes and a UTF-8 locale (without one it draws `_` for the sort arrows and borders);
/// glibc reads C.UTF-8 from /usr/lib/locale. Returns the host paths of the executables.
fn install_terminal(root: &Path) -> Result<Vec<PathBuf>> {
    let mut elves = Vec::new();
    // curl and openssl: real TLS clients for the test that fetches from the load server.
    for (name, package) in [
        ("tmux", "tmux"),
        ("bash", "bash"),
        ("curl", "curl"),
        ("openssl", "openssl"),
        // Runs the static binary as a non-root user with only the capabilities of the
        // example systemd unit (tests/tests/dist.rs); busybox's setpriv cannot change ids.
        ("setpriv", "util-linux"),
    ] {
        let host = cmd::which(name).with_context(|| {
            format!("{name} not found; run `cargo xtask setup` (package {package})")
        })?;
        fs::copy(&host, root.join("usr/bin").join(name))
            .with_context(|| format!("copying {}", host.display()))?;
        elves.push(host);
    }
    for dir in ["/lib/terminfo", "/usr/lib/locale/C.utf8"] {
        let host = Path::new(dir);
        if !host.is_dir() {
            bail!("{dir} not found (packages ncurses-base and libc-bin)");
        }
        let dest = root.join(dir.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            mkdir(parent)?;
        }
        cmd::run(Command::new("cp").arg("-a").arg(host).arg(&dest))
            .with_context(|| format!("copying {dir}"))?;
    }
    Ok(elves)
}

/// `strip --strip-debug` into the initramfs: debug builds carry tens of MB of DWARF each.
fn strip_copy(src: &Path, dest: &Path) -> Result<()> {
    cmd::stdout(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(dest)
            .arg(src),
    )
    .with_context(|| format!("stripping {} (package binutils)", src.display()))?;
    Ok(())
}

/// Copies the shared libraries of every ELF (and the dynamic loader) to the same absolute
/// paths inside the root. Static executables have none. With `unpacked`, the ELFs come
/// from that tree: `ldd` looks there first, and its libraries go to their package paths
/// (`<tree>/usr/lib/...` -> `/usr/lib/...`), where the guest's loader finds them.
fn copy_shared_libraries(
    elves: &[PathBuf],
    root: &Path,
    unpacked: Option<&Unpacked>,
) -> Result<()> {
    let mut libs = BTreeSet::new();
    for elf in elves {
        let mut ldd = Command::new("ldd");
        if let Some(u) = unpacked {
            ldd.env("LD_LIBRARY_PATH", u.library_path());
        }
        let out = ldd
            .arg(elf)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running ldd on {}", elf.display()))?;
        // ldd exits 1 for static executables ("not a dynamic executable").
        if out.status.success() {
            libs.extend(parse_ldd(&String::from_utf8_lossy(&out.stdout)));
        }
    }
    for lib in libs {
        let dest = root.join(guest_path(&lib, unpacked.map(|u| u.root.as_path())));
        if unpacked.is_some() && dest.exists() {
            // A host library the first pass already copied (libc, libstdc++...).
            continue;
        }
        if let Some(parent) = dest.parent() {
            mkdir(parent)?;
        }
        // fs::copy follows symlinks: the guest gets the real file under the linked name.
        fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    Ok(())
}

/// Where a library `ldd` found goes, relative to the guest's `/`: a library of the
/// unpacked tree at its package path (`<tree>/usr/lib/x/libbcc.so` -> `usr/lib/x/libbcc.so`),
/// a host library at its host path.
pub fn guest_path<'a>(lib: &'a Path, unpacked_root: Option<&Path>) -> &'a Path {
    unpacked_root
        .and_then(|r| lib.strip_prefix(r).ok())
        .or_else(|| lib.strip_prefix("/").ok())
        .unwrap_or(lib)
}

/// Absolute library paths in `ldd` output:
/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and the loader line
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
pub fn parse_ldd(output: &str) -> BTreeSet<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `cpio -o -H newc` of the whole tree, owned by root. The file list is produced here
/// (parents before children) so no shell pipeline is needed.
fn pack_cpio(root: &Path, archive: &Path) -> Result<()> {
    let mut entries = Vec::new();
    walk(root, Path::new("."), &mut entries)?;
    let out =
        fs::File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("cannot start cpio (package cpio)")?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut list = String::new();
        for e in &entries {
            list.push_str(&e.to_string_lossy());
            list.push('\n');
        }
        stdin
            .write_all(list.as_bytes())
            .context("feeding cpio its file list")?;
    }
    let status = child.wait().context("waiting for cpio")?;
    if !status.success() {
        bail!("cpio failed ({status}) packing {}", root.display());
    }
    Ok(())
}

fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = base.join(rel);
    let mut children: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let child_rel = rel.join(child.file_name());
        out.push(child_rel.clone());
        // file_type() does not follow symlinks: applet links are stored as links.
        if child.file_type()?.is_dir() {
            walk(base, &child_rel, out)?;
        }
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {target}", link.display()))
}

fn write(path: &Path, text: &str, executable: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parsing() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd4b9e4000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f910a5d8000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9109b3e000)
\tlibmissing.so => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f910a60e000)
";
        let libs: Vec<PathBuf> = parse_ldd(out).into_iter().collect();
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn unpacked_libraries_go_to_their_package_paths() {
        let tree = Path::new("/w/target/vm/tools/bpftrace/0.17.0-1/root");
        let ours = tree.join("usr/lib/x86_64-linux-gnu/libbcc_bpf.so.0");
        assert_eq!(
            guest_path(&ours, Some(tree)),
            Path::new("usr/lib/x86_64-linux-gnu/libbcc_bpf.so.0")
        );
        let host = Path::new("/lib/x86_64-linux-gnu/libLLVM-14.so.1");
        assert_eq!(
            guest_path(host, Some(tree)),
            Path::new("lib/x86_64-linux-gnu/libLLVM-14.so.1")
        );
        assert_eq!(
            guest_path(host, None),
            Path::new("lib/x86_64-linux-gnu/libLLVM-14.so.1")
        );
    }

    #[test]
    fn init_exports_what_the_tests_need_and_powers_off() {
        let init = init_script(Series::V6_12, "/opt/kt/run-tests </dev/null");
        assert!(init.starts_with("#!/bin/sh\n"));
        for needle in [
            "KTLS_TRACE_BIN_DIR=/opt/kt",
            "KTLS_TRACE_GUEST=6.12",
            "HOME=/root",
            "mnt bpf bpf /sys/fs/bpf",
            "mnt tracefs tracefs /sys/kernel/tracing",
            "modprobe tls",
            "ip link set lo up",
            "/opt/kt/run-tests </dev/null\n",
        ] {
            assert!(init.contains(needle), "missing {needle:?}");
        }
        assert!(init.trim_end().ends_with("poweroff -f"));
        assert!(init.contains("echo \"KT-TLS-FAILED modprobe tls exited $?\""));
        assert!(init.contains("KT-MODULES"));

        let old = init_script(Series::V5_10, "/opt/kt/run-tests </dev/null");
        assert!(old.contains("KTLS_TRACE_GUEST=5.10 "));
        assert!(!old.contains("modprobe tls"));
        assert!(old.contains("echo \"KT-TLS none (kernel built without CONFIG_TLS)\""));
        assert!(init_script(Series::Latest, "x").contains("KTLS_TRACE_GUEST=latest "));
    }

    #[test]
    fn test_runs_become_the_guest_command() {
        assert_eq!(TestRun::default().command(), "/opt/kt/run-tests </dev/null");
        let run = TestRun {
            filters: vec!["soak".into(), "a::b".into()],
            soak_secs: Some(30),
        };
        assert_eq!(
            run.command(),
            "KTLS_TRACE_SOAK_SECS=30 /opt/kt/run-tests soak a::b </dev/null"
        );
    }

    #[test]
    fn run_tests_marks_every_executable() {
        let s = run_tests_script(600);
        assert!(s.contains("limit=${KT_EXE_TIMEOUT:-600}"));
        assert!(s.contains("echo \"KT-BEGIN $exe\""));
        assert!(s.contains("--include-ignored --test-threads=1"));
        assert!(s.contains("echo \"KT-END $exe rc=$?\""));
    }
}
