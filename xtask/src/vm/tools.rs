//! Debian tools that some guests carry (the bench's bpftrace; Prometheus and promtool in
//! the kTLS test guests), fetched with the project's apt state (vm/apt.rs) and unpacked
//! under `target/vm/tools/`, never installed on the host:
//!
//! ```text
//! tools/<package>/<version>/debs/   the package, and either every dependency the host lacks
//!                                   (`Deps::HostLacks`: the rest comes from the host) or
//!                                   only the named companions (`Deps::Only`)
//! tools/<package>/<version>/root/   dpkg-deb -x of every .deb (stamp .unpacked)
//! ```
//!
//! The package comes from the host's own release (its codename), so the libraries taken
//! from the host are the ones it was built against. The initramfs copies the executables
//! and their libraries from here (vm/initramfs.rs). `cargo xtask test` also runs the
//! unpacked promtool on the host, to test docs/prometheus/'s rules.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::apt::{self, Apt};
use crate::cmd;

/// Executables unpacked from Debian packages, with the tree their missing libraries were
/// unpacked into.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub package: String,
    pub version: String,
    /// The dpkg-deb -x tree.
    pub root: PathBuf,
    /// The executables, relative to `root` (and to the guest's `/`), e.g. `usr/bin/bpftrace`.
    pub executables: Vec<PathBuf>,
}

/// Library directories of an unpacked tree, in the loader's order. The guests are
/// x86_64 like the host (qemu-system-x86_64).
const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib",
    "usr/lib",
];

impl Unpacked {
    /// `LD_LIBRARY_PATH` for running (or `ldd`-ing) the executables from the tree on the
    /// host: the tree's library directories first, then the host's defaults.
    pub fn library_path(&self) -> OsString {
        let dirs: Vec<String> = LIB_DIRS
            .iter()
            .map(|d| self.root.join(d))
            .filter(|d| d.is_dir())
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        OsString::from(dirs.join(":"))
    }

    /// Libraries `ldd` cannot find for the executables (a host library removed since the
    /// download, an interrupted unpack).
    pub fn missing_libraries(&self) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for exe in &self.executables {
            let path = self.root.join(exe);
            if !path.is_file() {
                bail!("{} has no {}", self.package, exe.display());
            }
            let out = Command::new("ldd")
                .arg(&path)
                .env("LD_LIBRARY_PATH", self.library_path())
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running ldd on {}", path.display()))?;
            missing.extend(parse_ldd_missing(&String::from_utf8_lossy(&out.stdout)));
        }
        missing.sort();
        missing.dedup();
        Ok(missing)
    }
}

/// The sonames `ldd` reports as `libfoo.so.1 => not found`.
pub fn parse_ldd_missing(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once("=>")?;
            (rest.trim() == "not found").then(|| name.trim().to_string())
        })
        .collect()
}

/// The suite to take host-side tools from: the host's own release, which must be one of
/// the project's suites (one apt state serves everything, vm/kernel.rs `all_suites`).
pub fn host_suite<'a>(codename: Option<&str>, suites: &[&'a str]) -> Result<&'a str> {
    let codename = codename.context(
        "/etc/os-release has no VERSION_CODENAME: cannot tell which Debian release's \
         packages match the host's libraries",
    )?;
    suites.iter().copied().find(|s| *s == codename).with_context(|| {
        format!(
            "the host runs Debian {codename}, which is not among the project's apt suites ({}); \
             add it to a series in xtask/src/vm/series.rs or fetch the tool another way",
            suites.join(", ")
        )
    })
}

/// Which .debs come along with a tool's package.
#[derive(Debug, Clone, Copy)]
pub enum Deps<'a> {
    /// Every dependency the host lacks (bpftrace: its LLVM and BCC libraries).
    HostLacks,
    /// None but these packages, when the host's release offers them. For Go programs that
    /// need only glibc (prometheus), whose declared dependencies are its web UI's
    /// JavaScript, which the guests never serve. The companions carry executables the
    /// package lost in a later release (promtool, a package of its own after bookworm).
    Only(&'a [&'a str]),
}

/// `package` from the host's release with the libraries the host lacks, unpacked under
/// `<vm_dir>/tools/`; `executables` are paths inside the package (`usr/bin/bpftrace`).
/// Reuses a complete earlier unpack; offline, the newest cached one is used.
pub fn prepare(vm_dir: &Path, package: &str, executables: &[&str]) -> Result<Unpacked> {
    prepare_with(vm_dir, package, executables, Deps::HostLacks)
}

/// [`prepare`], with `deps` saying which other packages come along.
pub fn prepare_with(
    vm_dir: &Path,
    package: &str,
    executables: &[&str],
    deps: Deps<'_>,
) -> Result<Unpacked> {
    let dir = vm_dir.join("tools").join(package);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let suites = super::kernel::all_suites();
    let codename = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| apt::os_codename(&t));
    let suite = host_suite(codename.as_deref(), &suites)?;
    let apt = Apt::open(&vm_dir.join("apt"), &suites)?;
    let companions: &[&str] = match deps {
        Deps::HostLacks => &[],
        Deps::Only(c) => c,
    };
    let mut names = vec![package.to_string()];
    names.extend(companions.iter().map(|c| c.to_string()));
    // The package's version names the directory; the companions' versions (same source
    // package, so normally the same) are what to download.
    let resolved = apt
        .refresh(apt::MAX_LIST_AGE)
        .and_then(|()| apt.offers(&names))
        .and_then(|offers| {
            let in_suite: Vec<_> = offers.into_iter().filter(|o| o.suite == suite).collect();
            let version = in_suite
                .iter()
                .find(|o| o.package == package)
                .map(|o| o.version.clone())
                .with_context(|| format!("apt offers no {package} in {suite}"))?;
            let specs: Vec<String> = names
                .iter()
                .filter_map(|n| in_suite.iter().find(|o| &o.package == n))
                .map(|o| format!("{}={}", o.package, o.version))
                .collect();
            Ok((version, specs))
        });
    let (version, specs) = match resolved {
        Ok(v) => v,
        Err(e) => {
            let cached = newest_cached(&dir).with_context(|| format!("{e:#}; none cached"))?;
            eprintln!("vm: warning: {e:#}; using the cached {package} {cached}");
            (cached, Vec::new())
        }
    };
    let vdir = dir.join(&version);
    let unpacked = Unpacked {
        package: package.to_string(),
        version: version.clone(),
        root: vdir.join("root"),
        executables: executables.iter().map(PathBuf::from).collect(),
    };
    let stamp = unpacked.root.join(".unpacked");
    if stamp.is_file() && unpacked.missing_libraries()?.is_empty() {
        return Ok(unpacked);
    }
    // First time, or the host lost a library since: apt fetches what is missing now
    // (files already downloaded are kept).
    let debs_dir = vdir.join("debs");
    match deps {
        Deps::HostLacks => {
            eprintln!(
                "vm: fetching {package} {version} ({suite}) and the libraries the host lacks"
            );
            apt.download_missing(&format!("{package}={version}"), suite, &debs_dir)?;
        }
        Deps::Only(_) => {
            if specs.is_empty() {
                // Offline with an incomplete unpack: nothing to fetch it from.
                bail!("cannot fetch {package} {version}: apt is unavailable");
            }
            eprintln!("vm: fetching {} ({suite})", specs.join(", "));
            fs::create_dir_all(&debs_dir)
                .with_context(|| format!("creating {}", debs_dir.display()))?;
            apt.download(&specs, &debs_dir)
                .with_context(|| format!("downloading {}", specs.join(" ")))?;
        }
    }
    let _ = fs::remove_dir_all(&unpacked.root);
    fs::create_dir_all(&unpacked.root)
        .with_context(|| format!("creating {}", unpacked.root.display()))?;
    let mut debs: Vec<PathBuf> = fs::read_dir(vdir.join("debs"))
        .with_context(|| format!("reading {}", vdir.join("debs").display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    for deb in &debs {
        cmd::run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb)
                .arg(&unpacked.root),
        )
        .with_context(|| format!("unpacking {}", deb.display()))?;
    }
    let missing = unpacked.missing_libraries()?;
    if !missing.is_empty() {
        bail!(
            "{package} {version} unpacked in {} still lacks {}",
            unpacked.root.display(),
            missing.join(", ")
        );
    }
    fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))?;
    prune_others(&dir, &version);
    Ok(unpacked)
}

/// The version directory with a complete unpack, the newest by name (apt's order is not
/// needed for the offline case: normally only one is kept).
fn newest_cached(dir: &Path) -> Option<String> {
    let mut versions: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("root/.unpacked").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions.pop()
}

/// Older versions are only disk space: best effort.
fn prune_others(dir: &Path, current: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name() != current {
            eprintln!("vm: removing the older {}", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_missing_libraries() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd4b9e4000)
\tlibbcc_bpf.so.0 => not found
\tlibclang-14.so.13 => /w/target/vm/tools/bpftrace/0.17.0-1/root/usr/lib/x86_64-linux-gnu/libclang-14.so.13 (0x1)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9109b3e000)
\tlibz3.so.4 => not found
";
        assert_eq!(parse_ldd_missing(out), ["libbcc_bpf.so.0", "libz3.so.4"]);
        assert!(parse_ldd_missing("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn tools_come_from_the_hosts_release() {
        let suites = ["bullseye", "bookworm", "bookworm-security", "sid"];
        assert_eq!(host_suite(Some("bookworm"), &suites).unwrap(), "bookworm");
        let e = host_suite(Some("trixie"), &suites).unwrap_err();
        assert!(format!("{e:#}").contains("trixie"), "{e:#}");
        assert!(host_suite(None, &suites).is_err());
    }

    #[test]
    fn library_path_lists_only_the_trees_directories() {
        let root = std::env::temp_dir().join(format!("xtask-tools-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/lib/x86_64-linux-gnu")).unwrap();
        let u = Unpacked {
            package: "bpftrace".into(),
            version: "0.17.0-1".into(),
            root: root.clone(),
            executables: vec![PathBuf::from("usr/bin/bpftrace")],
        };
        // lib/ and lib/x86_64-linux-gnu do not exist; usr/lib does (a parent).
        let expected = format!(
            "{}:{}",
            root.join("usr/lib/x86_64-linux-gnu").display(),
            root.join("usr/lib").display()
        );
        assert_eq!(u.library_path(), OsString::from(expected));
        assert!(u.missing_libraries().is_err(), "no executable: an error");
        fs::remove_dir_all(&root).unwrap();
    }
}
