//! Finding, fetching and preparing Debian's cloud kernels for the guests.
//!
//! Debian bumps the ABI number (`6.1.0-<N>`) or the upstream patch level (`6.12.<N>`)
//! with every security update, so the package is resolved by name pattern each run and the
//! newest wins. Everything lands under `target/vm/cache/` and is reused:
//!
//! ```text
//! cache/<package>_<version>_amd64.deb      apt-get download
//! cache/<package>/                         dpkg -x + depmod (the whole package)
//! cache/<package>/initrd-modules/          the module subset for the initramfs:
//!     lib/modules/<ver>/...                decompressed .ko files + depmod index
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::Series;
use crate::cmd;

/// Module trees the guests need: kernel TLS, the crypto it requests (AES-GCM, also the
/// x86 accelerated versions), lib/ (crypto helpers), and net/ipv4 (inet_diag/tcp_diag for
/// sock_diag). Their dependencies are added from modules.dep, wherever they live.
/// drivers/, fs/, sound/ are left out: the guests boot from the initramfs alone.
pub const MODULE_TREES: &[&str] = &[
    "kernel/net/tls/",
    "kernel/crypto/",
    "kernel/arch/x86/crypto/",
    "kernel/lib/",
    "kernel/net/ipv4/",
];

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    /// Debian package name, e.g. `linux-image-6.12.117+deb12-cloud-amd64`.
    pub package: String,
    /// `uname -r`, e.g. `6.12.117+deb12-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Directory holding `lib/modules/<release>` with the subset for the initramfs.
    pub initrd_modules: PathBuf,
}

impl Series {
    /// The `N` of a package name of this series, or None for any other package
    /// (other flavours, `-unsigned`, `-dbg`, meta packages).
    pub fn package_number(self, package: &str) -> Option<u32> {
        let (prefix, suffix) = match self {
            Series::V6_1 => ("linux-image-6.1.0-", "-cloud-amd64"),
            Series::V6_12 => ("linux-image-6.12.", "+deb12-cloud-amd64"),
        };
        let n = package.strip_prefix(prefix)?.strip_suffix(suffix)?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }

    /// A loose `apt-cache search --names-only` regex; `package_number` does the exact match.
    fn search_regex(self) -> &'static str {
        match self {
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$",
        }
    }
}

/// The newest package of the series among `names`.
pub fn newest_package<'a>(series: Series, names: impl Iterator<Item = &'a str>) -> Option<String> {
    names
        .filter_map(|n| series.package_number(n).map(|num| (num, n)))
        .max_by_key(|(num, _)| *num)
        .map(|(_, n)| n.to_string())
}

/// Resolves, downloads and prepares the newest kernel of the series.
pub fn prepare(series: Series, cache: &Path) -> Result<Kernel> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let package = resolve(series, cache)?;
    let deb = download(&package, cache)?;
    let unpacked = unpack(&package, &deb, cache)?;
    let release = module_release(&unpacked)?;
    let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} has no boot/vmlinuz-{release}", package);
    }
    let initrd_modules = module_subset(&unpacked, &release)?;
    prune_older(series, &package, cache);
    Ok(Kernel {
        series,
        package,
        release,
        vmlinuz,
        initrd_modules,
    })
}

/// apt's newest package of the series; falls back to `apt-get update` when the index is
/// empty (fresh containers) and to the newest cached kernel when apt cannot help (offline).
fn resolve(series: Series, cache: &Path) -> Result<String> {
    let search = || -> Result<Option<String>> {
        let out = cmd::stdout(Command::new("apt-cache").args([
            "search",
            "--names-only",
            series.search_regex(),
        ]))?;
        Ok(newest_package(
            series,
            out.lines().filter_map(|l| l.split_whitespace().next()),
        ))
    };
    if let Some(p) = search().unwrap_or(None) {
        return Ok(p);
    }
    if cmd::is_root() {
        eprintln!(
            "vm: no {} kernel in the apt index; running apt-get update",
            series.label()
        );
        cmd::run(Command::new("apt-get").args(["-q", "update"]))?;
        if let Some(p) = search()? {
            return Ok(p);
        }
    }
    let cached = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".unpacked").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    if let Some(p) = newest_package(series, cached.iter().map(String::as_str)) {
        eprintln!(
            "vm: apt knows no {} kernel; using the cached {p}",
            series.label()
        );
        return Ok(p);
    }
    bail!(
        "no package matching {} in the apt index (needs Debian bookworm's main + security \
         sources)",
        series.search_regex()
    )
}

/// The cached `.deb`, or `apt-get download` it. Downloads go to a scratch directory
/// first so that an interrupted download never looks like a cached one.
fn download(package: &str, cache: &Path) -> Result<PathBuf> {
    if let Some(deb) = cached_deb(package, cache)? {
        return Ok(deb);
    }
    let scratch = cache.join(format!(".download-{package}"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // apt downloads as its unprivileged `_apt` user when that user can write the directory,
    // else as root with a warning. Best effort either way.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o777));
    }
    cmd::run(
        Command::new("apt-get")
            .args(["-q", "download", package])
            .current_dir(&scratch),
    )
    .with_context(|| format!("downloading {package}"))?;
    let deb = cached_deb(package, &scratch)?
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let name = deb.file_name().context("a .deb without a file name")?;
    let dest = cache.join(name);
    std::fs::rename(&deb, &dest).with_context(|| format!("moving {}", deb.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(dest)
}

fn cached_deb(package: &str, dir: &Path) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// `dpkg -x` and `depmod` (Debian ships no modules.dep; the initramfs subset is chosen
/// from the full dependency graph). A `.unpacked` stamp marks a complete unpack.
fn unpack(package: &str, deb: &Path, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join(package);
    if dir.join(".unpacked").is_file() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("vm: unpacking {}", deb.display());
    cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(&dir))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let release = module_release(&dir)?;
    cmd::run(Command::new("depmod").arg("-b").arg(&dir).arg(&release))
        .with_context(|| format!("indexing the modules of {package}"))?;
    std::fs::write(dir.join(".unpacked"), b"")?;
    Ok(dir)
}

/// The single `lib/modules/<release>` directory of an unpacked kernel package.
fn module_release(root: &Path) -> Result<String> {
    let modules = root.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!(
            "expected one kernel release in {}, found {n}",
            modules.display()
        ),
    }
}

/// `modules.dep` lines: `kernel/net/tls/tls.ko.xz: kernel/...dep.ko.xz ...`.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                module.trim().to_string(),
                deps.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect()
}

/// Every module under one of `trees`, plus everything those depend on.
pub fn select_modules(deps: &BTreeMap<String, Vec<String>>, trees: &[&str]) -> BTreeSet<String> {
    let mut chosen = BTreeSet::new();
    let mut todo: Vec<&str> = deps
        .keys()
        .filter(|m| trees.iter().any(|t| m.starts_with(t)))
        .map(String::as_str)
        .collect();
    while let Some(m) = todo.pop() {
        if chosen.insert(m.to_string()) {
            todo.extend(deps.get(m).into_iter().flatten().map(String::as_str));
        }
    }
    chosen
}

/// Copies the chosen modules into `initrd-modules/`, decompresses them (busybox modprobe
/// cannot rely on reading .ko.xz, the kernel's own decompressor is not in every config)
/// and re-runs depmod so modules.dep / modules.alias (which the kernel's crypto
/// request_module needs) describe exactly what is there. Rebuilt when MODULE_TREES change.
fn module_subset(unpacked: &Path, release: &str) -> Result<PathBuf> {
    let out = unpacked.join("initrd-modules");
    let stamp = out.join(".complete");
    let wanted = MODULE_TREES.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(out);
    }
    let _ = std::fs::remove_dir_all(&out);
    let src = unpacked.join("lib/modules").join(release);
    let dst = out.join("lib/modules").join(release);
    let dep_text = std::fs::read_to_string(src.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", src.display()))?;
    let chosen = select_modules(&parse_modules_dep(&dep_text), MODULE_TREES);
    if !chosen.iter().any(|m| m.starts_with("kernel/net/tls/")) {
        bail!("{} has no kernel/net/tls module", src.display());
    }
    let mut compressed = Vec::new();
    for module in &chosen {
        let to = dst.join(module);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(src.join(module), &to).with_context(|| format!("copying module {module}"))?;
        if module.ends_with(".xz") {
            compressed.push(to);
        }
    }
    for chunk in compressed.chunks(256) {
        cmd::run(Command::new("xz").args(["-d", "-q", "--"]).args(chunk))
            .context("decompressing the guest's modules")?;
    }
    for index in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let from = src.join(index);
        if from.is_file() {
            std::fs::copy(&from, dst.join(index))
                .with_context(|| format!("copying {}", from.display()))?;
        }
    }
    cmd::run(Command::new("depmod").arg("-b").arg(&out).arg(release))
        .context("indexing the guest's module subset")?;
    eprintln!(
        "vm: {} modules for the initramfs ({} decompressed)",
        chosen.len(),
        compressed.len()
    );
    std::fs::write(&stamp, wanted)?;
    Ok(out)
}

/// Removes older kernels of the same series from the cache (best effort: a leftover is
/// only disk space).
fn prune_older(series: Series, current: &str, cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let package = name.split('_').next().unwrap_or(&name);
        if package != current && series.package_number(package).is_some() {
            eprintln!("vm: removing the older cached {name}");
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APT_NAMES: &[&str] = &[
        "linux-image-6.1.0-47-cloud-amd64",
        "linux-image-6.1.0-47-cloud-amd64-dbg",
        "linux-image-6.1.0-56-cloud-amd64-unsigned",
        "linux-image-6.1.0-9-cloud-amd64",
        "linux-image-6.1.0-56-cloud-amd64",
        "linux-image-6.1.0-57-amd64",
        "linux-image-6.1.0-57-rt-amd64",
        "linux-image-cloud-amd64",
        "linux-image-6.12.9+deb12-cloud-amd64",
        "linux-image-6.12.117+deb12-cloud-amd64",
        "linux-image-6.12.117+deb12-cloud-amd64-dbg",
        "linux-image-6.12.118+deb12-cloud-amd64-unsigned",
        "linux-image-6.12.120+deb12-amd64",
        "linux-image-6.12.x+deb12-cloud-amd64",
    ];

    #[test]
    fn picks_the_newest_signed_cloud_kernel() {
        assert_eq!(
            newest_package(Series::V6_1, APT_NAMES.iter().copied()).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64"),
            "numeric (not lexical) order; flavours, -unsigned and -dbg skipped"
        );
        assert_eq!(
            newest_package(Series::V6_12, APT_NAMES.iter().copied()).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(newest_package(Series::V6_12, std::iter::empty()), None);
    }

    #[test]
    fn package_numbers() {
        assert_eq!(
            Series::V6_1.package_number("linux-image-6.1.0-56-cloud-amd64"),
            Some(56)
        );
        assert_eq!(
            Series::V6_12.package_number("linux-image-6.12.117+deb12-cloud-amd64"),
            Some(117)
        );
        assert_eq!(
            Series::V6_1.package_number("linux-image-6.12.117+deb12-cloud-amd64"),
            None
        );
        assert_eq!(
            Series::V6_1.package_number("linux-image-6.1.0--cloud-amd64"),
            None
        );
        // A .deb file name in the cache is not a package name.
        assert_eq!(
            Series::V6_1.package_number("linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"),
            None
        );
    }

    #[test]
    fn module_selection_follows_dependencies_out_of_the_chosen_trees() {
        let dep = "\
kernel/net/tls/tls.ko.xz:
kernel/net/ipv4/tcp_diag.ko.xz: kernel/net/ipv4/inet_diag.ko.xz
kernel/net/ipv4/inet_diag.ko.xz: kernel/net/core/sock_diag.ko.xz
kernel/net/core/sock_diag.ko.xz:
kernel/crypto/gcm.ko.xz: kernel/crypto/ghash-generic.ko.xz kernel/lib/crypto/libaes.ko.xz
kernel/crypto/ghash-generic.ko.xz:
kernel/lib/crypto/libaes.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz
kernel/drivers/net/net_failover.ko.xz:
kernel/sound/core/snd.ko.xz:
";
        let deps = parse_modules_dep(dep);
        assert_eq!(deps.len(), 10);
        let chosen = select_modules(&deps, MODULE_TREES);
        let expected: BTreeSet<String> = [
            "kernel/net/tls/tls.ko.xz",
            "kernel/net/ipv4/tcp_diag.ko.xz",
            "kernel/net/ipv4/inet_diag.ko.xz",
            "kernel/net/core/sock_diag.ko.xz",
            "kernel/crypto/gcm.ko.xz",
            "kernel/crypto/ghash-generic.ko.xz",
            "kernel/lib/crypto/libaes.ko.xz",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(chosen, expected);
    }
}
