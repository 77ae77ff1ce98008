//! Finding, fetching and preparing Debian's cloud kernels for the guests.
//!
//! Debian bumps the ABI number (`6.1.0-<N>`) or the upstream patch level (`6.12.<N>`)
//! with every update, so each series (vm/series.rs) is resolved by name pattern on every
//! run, in the suites it declares, from the project's own apt state (vm/apt.rs); the
//! newest wins. Everything lands under `target/vm/` and is reused:
//!
//! ```text
//! apt/                                   the project's apt state (vm/apt.rs)
//! cache/<series>/<package>/debs/         apt-get download: linux-image-<release>, and for
//!                                        split packages the linux-binary-, linux-modules-
//!                                        and linux-base-<release> it depends on
//! cache/<series>/<package>/root/         dpkg -x of every .deb + depmod (.unpacked stamp)
//! cache/<series>/<package>/initrd-modules/
//!     lib/modules/<release>/             the module subset for the initramfs:
//!                                        decompressed .ko files + depmod index
//! ```
//!
//! Two package layouts exist: classic ones ship `/boot/vmlinuz-<release>` and
//! `/lib/modules/<release>` in `linux-image-<release>` itself (5.10, 6.1, 6.12); split ones
//! (6.19 and later) make `linux-image-<release>` an empty package depending on
//! `linux-binary-<release>` (`/usr/lib/modules/<release>/vmlinuz`), `linux-modules-<release>`
//! (`/usr/lib/modules/<release>/kernel`) and `linux-base-<release>` (modules.builtin,
//! config). Modules may be plain, `.ko.xz` or `.ko.zst`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Series,
    apt::{self, Apt, Offer},
};
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

/// Resolves, downloads and prepares the newest kernel of the series, under `vm_dir`
/// (`target/vm`). Offline, or when the mirror fails, the newest cached kernel of the
/// series is used instead.
pub fn prepare(series: Series, vm_dir: &Path) -> Result<Kernel> {
    let cache = vm_dir.join("cache");
    remove_old_layout(&cache);
    let series_dir = cache.join(series.label());
    fs::create_dir_all(&series_dir)
        .with_context(|| format!("creating {}", series_dir.display()))?;
    let fetched = Apt::open(&vm_dir.join("apt"), &all_suites()).and_then(|apt| {
        let offer = resolve(series, &apt)?;
        fetch(&apt, &offer, &series_dir)?;
        Ok(offer.package)
    });
    let package = match fetched {
        Ok(p) => p,
        Err(e) => cached_fallback(series, &series_dir, &e)?,
    };
    let release = Series::release(&package)
        .with_context(|| format!("{package} is not a linux-image package"))?;
    let dir = series_dir.join(&package);
    let layout = find_layout(&dir.join("root"), release)?;
    let initrd_modules = module_subset(series, &layout, &dir, release)?;
    prune_others(&series_dir, &package);
    Ok(Kernel {
        series,
        release: release.to_string(),
        vmlinuz: layout.vmlinuz,
        initrd_modules,
        package,
    })
}

/// The suites of every series, once each: one apt state serves the whole matrix, so a
/// run for one series does not make the lists stale for another.
pub(super) fn all_suites() -> Vec<&'static str> {
    let mut suites: Vec<&str> = Vec::new();
    for s in Series::ALL {
        for suite in s.suites() {
            if !suites.contains(suite) {
                suites.push(suite);
            }
        }
    }
    suites
}

/// The newest package of the series in its own suites. The lists are refreshed when
/// stale; a failed refresh (offline) leaves the old lists to answer.
fn resolve(series: Series, apt: &Apt) -> Result<Offer> {
    if let Err(e) = apt.refresh(apt::MAX_LIST_AGE) {
        eprintln!("vm: warning: {e:#}; resolving from the lists as they are");
    }
    let names: Vec<String> = apt
        .search(series.search_regex())?
        .into_iter()
        .filter(|n| series.version(n).is_some())
        .collect();
    let offers = apt.offers(&names)?;
    newest_offer(series, &offers).with_context(|| {
        format!(
            "no package matching {} in {} (sources: {})",
            series.search_regex(),
            series.suites().join(", "),
            apt.sources_path().display()
        )
    })
}

/// The newest package of the series offered by one of its suites. A package offered by
/// several suites keeps madison's first line (apt lists the newest version first).
pub fn newest_offer(series: Series, offers: &[Offer]) -> Option<Offer> {
    let mut best: Option<(Vec<u64>, &Offer)> = None;
    for o in offers {
        if !series.suites().contains(&o.suite.as_str()) {
            continue;
        }
        let Some(v) = series.version(&o.package) else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, o));
        }
    }
    best.map(|(_, o)| o.clone())
}

/// The packages that make up the kernel of a split `linux-image-<release>`: every
/// dependency named `linux-*-<release>` (linux-binary-, linux-modules-, linux-base-), with
/// the pinned version. Empty for classic packages, whose dependencies are unversioned.
pub fn kernel_parts(
    depends: &[(String, Option<String>)],
    release: &str,
) -> Vec<(String, Option<String>)> {
    let suffix = format!("-{release}");
    let image = format!("linux-image-{release}");
    let mut parts: Vec<(String, Option<String>)> = Vec::new();
    for (name, version) in depends {
        if name.starts_with("linux-")
            && name.ends_with(&suffix)
            && *name != image
            && !parts.iter().any(|(n, _)| n == name)
        {
            parts.push((name.clone(), version.clone()));
        }
    }
    parts
}

/// Downloads (with its parts) and unpacks `offer` into `<series_dir>/<package>/` unless
/// that is already complete.
fn fetch(apt: &Apt, offer: &Offer, series_dir: &Path) -> Result<()> {
    let dir = series_dir.join(&offer.package);
    let root = dir.join("root");
    if root.join(".unpacked").is_file() {
        return Ok(());
    }
    let release = Series::release(&offer.package)
        .with_context(|| format!("{} is not a linux-image package", offer.package))?;
    let depends = apt.depends(&offer.package, &offer.version)?;
    let mut specs = vec![format!("{}={}", offer.package, offer.version)];
    specs.extend(
        kernel_parts(&depends, release)
            .into_iter()
            .map(|(n, v)| v.map_or_else(|| n.clone(), |v| format!("{n}={v}"))),
    );
    let debs = dir.join("debs");
    if !debs.join(".complete").is_file() {
        download(apt, &specs, &dir)?;
    }
    unpack(&debs, &root, release)
}

/// `apt-get download` into a scratch directory first, so that an interrupted download
/// never looks like a cached one.
fn download(apt: &Apt, specs: &[String], dir: &Path) -> Result<()> {
    let scratch = dir.join(".download");
    let debs = dir.join("debs");
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // apt downloads as its unprivileged `_apt` user when that user can write the directory,
    // else as root with a warning. Best effort either way.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = fs::set_permissions(&scratch, fs::Permissions::from_mode(0o777));
    }
    let started = Instant::now();
    apt.download(specs, &scratch)
        .with_context(|| format!("downloading {}", specs.join(" ")))?;
    let mut bytes = 0;
    for entry in fs::read_dir(&scratch)? {
        bytes += entry?.metadata().map(|m| m.len()).unwrap_or(0);
    }
    eprintln!(
        "vm: downloaded {} package(s), {:.1} MB in {}",
        specs.len(),
        bytes as f64 / 1e6,
        cmd::fmt_duration(started.elapsed())
    );
    fs::write(scratch.join(".complete"), b"")?;
    fs::rename(&scratch, &debs).with_context(|| format!("moving {}", scratch.display()))
}

/// `dpkg -x` of every .deb into `root`, then `depmod` (Debian ships no modules.dep; the
/// initramfs subset is chosen from the full dependency graph). A `.unpacked` stamp marks
/// a complete unpack.
fn unpack(debs: &Path, root: &Path, release: &str) -> Result<()> {
    let _ = fs::remove_dir_all(root);
    let mut files: Vec<PathBuf> = fs::read_dir(debs)
        .with_context(|| format!("reading {}", debs.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    for deb in &files {
        eprintln!("vm: unpacking {}", deb.display());
        cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(root))
            .with_context(|| format!("unpacking {}", deb.display()))?;
    }
    find_layout(root, release)?;
    // depmod -b looks in <base>/lib/modules; split packages install to /usr/lib/modules
    // (a merged-/usr system sees both as one).
    let lib_modules = root.join("lib/modules");
    if !lib_modules.exists() && root.join("usr/lib/modules").is_dir() {
        fs::create_dir_all(root.join("lib"))?;
        std::os::unix::fs::symlink("../usr/lib/modules", &lib_modules)
            .with_context(|| format!("linking {}", lib_modules.display()))?;
    }
    cmd::run(Command::new("depmod").arg("-b").arg(root).arg(release))
        .with_context(|| format!("indexing the modules of {release}"))?;
    fs::write(root.join(".unpacked"), b"")?;
    Ok(())
}

/// Where an unpacked kernel keeps its modules and its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `<root>/lib/modules/<release>` or `<root>/usr/lib/modules/<release>`.
    pub modules: PathBuf,
    /// `<root>/boot/vmlinuz-<release>` or `<root>/usr/lib/modules/<release>/vmlinuz`.
    pub vmlinuz: PathBuf,
    /// The kernel's build configuration, when the packages ship it.
    pub config: Option<PathBuf>,
}

/// Finds the modules, image and configuration of `release` in either layout.
pub fn find_layout(root: &Path, release: &str) -> Result<Layout> {
    let first = |candidates: &[PathBuf], dir: bool| {
        candidates
            .iter()
            .find(|p| if dir { p.is_dir() } else { p.is_file() })
            .cloned()
    };
    let module_dirs = [
        root.join("lib/modules").join(release),
        root.join("usr/lib/modules").join(release),
    ];
    let modules = first(&module_dirs, true).with_context(|| {
        format!(
            "{} has no lib/modules/{release} or usr/lib/modules/{release}",
            root.display()
        )
    })?;
    let vmlinuz = first(
        &[
            root.join("boot").join(format!("vmlinuz-{release}")),
            module_dirs[1].join("vmlinuz"),
            module_dirs[0].join("vmlinuz"),
        ],
        false,
    )
    .with_context(|| {
        format!(
            "{} has no boot/vmlinuz-{release} or usr/lib/modules/{release}/vmlinuz",
            root.display()
        )
    })?;
    let config = first(
        &[
            root.join("boot").join(format!("config-{release}")),
            module_dirs[1].join("config"),
            module_dirs[0].join("config"),
        ],
        false,
    );
    Ok(Layout {
        modules,
        vmlinuz,
        config,
    })
}

/// Whether a kernel configuration builds kernel TLS: `CONFIG_TLS=m|y` -> Some(true),
/// `# CONFIG_TLS is not set` -> Some(false), no line -> None.
pub fn config_tls(config: &str) -> Option<bool> {
    config.lines().find_map(|l| {
        let l = l.trim();
        if l == "# CONFIG_TLS is not set" {
            Some(false)
        } else {
            l.strip_prefix("CONFIG_TLS=").map(|v| v == "m" || v == "y")
        }
    })
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

/// The tool that decompresses a module file in place (removing the compressed file), by
/// its name; None for a plain `.ko`.
pub fn decompressor(module: &str) -> Option<&'static [&'static str]> {
    if module.ends_with(".ko.xz") {
        Some(&["xz", "-d", "-q", "--"])
    } else if module.ends_with(".ko.zst") {
        Some(&["zstd", "-d", "-q", "--rm", "--"])
    } else if module.ends_with(".ko.gz") {
        Some(&["gzip", "-d", "-q", "--"])
    } else {
        None
    }
}

/// What the module subset is made from; a change rebuilds it.
fn subset_recipe() -> String {
    format!(
        "v2 (decompressed: xz, zst, gz)\n{}",
        MODULE_TREES.join("\n")
    )
}

/// Copies the chosen modules into `<dir>/initrd-modules/`, decompresses them (busybox
/// modprobe cannot rely on reading compressed modules, the kernel's own decompressor is
/// not in every config) and re-runs depmod so modules.dep / modules.alias (which the
/// kernel's crypto request_module needs) describe exactly what is there.
fn module_subset(series: Series, layout: &Layout, dir: &Path, release: &str) -> Result<PathBuf> {
    let out = dir.join("initrd-modules");
    let stamp = out.join(".complete");
    let recipe = subset_recipe();
    if fs::read_to_string(&stamp).is_ok_and(|s| s == recipe) {
        return Ok(out);
    }
    let _ = fs::remove_dir_all(&out);
    let src = &layout.modules;
    let dst = out.join("lib/modules").join(release);
    let dep_text = fs::read_to_string(src.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", src.display()))?;
    let chosen = select_modules(&parse_modules_dep(&dep_text), MODULE_TREES);
    let has_tls = chosen.iter().any(|m| m.starts_with("kernel/net/tls/"));
    let configured = layout
        .config
        .as_ref()
        .and_then(|c| fs::read_to_string(c).ok())
        .and_then(|c| config_tls(&c));
    if series.has_ktls() && !has_tls {
        bail!(
            "{release} has no kernel/net/tls module, but series {} is declared with kernel TLS \
             (vm/series.rs){}",
            series.label(),
            match configured {
                Some(false) => "; its config says `# CONFIG_TLS is not set`",
                Some(true) => "; its config builds TLS in (CONFIG_TLS=y)",
                None => "",
            }
        );
    }
    if !series.has_ktls() && (has_tls || configured == Some(true)) {
        eprintln!(
            "vm: warning: {release} has kernel TLS, but series {} is declared without it \
             (vm/series.rs): the guest will not load it",
            series.label()
        );
    }
    let mut compressed: BTreeMap<&'static [&'static str], Vec<PathBuf>> = BTreeMap::new();
    for module in &chosen {
        let to = dst.join(module);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(src.join(module), &to).with_context(|| format!("copying module {module}"))?;
        if let Some(tool) = decompressor(module) {
            compressed.entry(tool).or_default().push(to);
        }
    }
    let mut decompressed = 0;
    for (tool, files) in &compressed {
        for chunk in files.chunks(256) {
            cmd::run(Command::new(tool[0]).args(&tool[1..]).args(chunk)).with_context(|| {
                format!(
                    "decompressing the guest's modules (package {})",
                    if tool[0] == "zstd" {
                        "zstd"
                    } else {
                        "xz-utils"
                    }
                )
            })?;
        }
        decompressed += files.len();
    }
    let mut missing = Vec::new();
    for index in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let from = src.join(index);
        if from.is_file() {
            fs::copy(&from, dst.join(index))
                .with_context(|| format!("copying {}", from.display()))?;
        } else {
            missing.push(index);
        }
    }
    if !missing.is_empty() {
        // Only costs clarity: modprobe of a built-in module then says "not found".
        eprintln!(
            "vm: note: {release} ships no {}; depmod indexes the subset without",
            missing.join(", ")
        );
    }
    cmd::run(Command::new("depmod").arg("-b").arg(&out).arg(release))
        .context("indexing the guest's module subset")?;
    eprintln!(
        "vm: {} modules for the initramfs ({decompressed} decompressed{})",
        chosen.len(),
        if has_tls { "" } else { ", no kernel TLS" }
    );
    fs::write(&stamp, recipe)?;
    Ok(out)
}

/// The newest complete kernel in the series' cache, when apt cannot help (offline, the
/// mirror fails, the package vanished).
fn cached_fallback(series: Series, series_dir: &Path, why: &anyhow::Error) -> Result<String> {
    let cached: Vec<String> = fs::read_dir(series_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("root/.unpacked").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match super::series::newest_package(series, cached.iter().map(String::as_str)) {
        Some(p) => {
            eprintln!("vm: warning: {why:#}; using the cached {p}");
            Ok(p)
        }
        None => Err(anyhow::anyhow!("{why:#}")).with_context(|| {
            format!(
                "no {} kernel: apt could not provide one and none is cached in {}",
                series.label(),
                series_dir.display()
            )
        }),
    }
}

/// Removes everything but `current` from the series' cache (older kernels, interrupted
/// downloads). Best effort: a leftover is only disk space.
fn prune_others(series_dir: &Path, current: &str) {
    let Ok(entries) = fs::read_dir(series_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() != current {
            eprintln!("vm: removing the older cached {}", entry.path().display());
            remove(&entry.path());
        }
    }
}

/// Before the kernel matrix, `cache/` held the kernels directly
/// (`cache/linux-image-*`); now it holds one directory per series. Anything else there
/// is a leftover of that layout.
fn remove_old_layout(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !Series::ALL.iter().any(|s| s.label() == name) {
            eprintln!(
                "vm: removing {} (cache layout of an older xtask)",
                entry.path().display()
            );
            remove(&entry.path());
        }
    }
}

fn remove(path: &Path) {
    let _ = if path.is_dir() && !path.is_symlink() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(package: &str, version: &str, suite: &str) -> Offer {
        Offer {
            package: package.into(),
            version: version.into(),
            suite: suite.into(),
        }
    }

    /// What `apt-cache madison` says about the candidates of every series in the
    /// project's apt state (bullseye(-security), bookworm(-security), trixie-backports,
    /// sid), 2026-12-02, abridged.
    fn madison() -> Vec<Offer> {
        vec![
            offer(
                "linux-image-5.10.0-32-cloud-amd64",
                "5.10.223-1",
                "bullseye",
            ),
            offer(
                "linux-image-5.10.0-46-cloud-amd64",
                "5.10.262-1",
                "bullseye-security",
            ),
            offer("linux-image-5.10.0-9-cloud-amd64", "5.10.70-1", "bullseye"),
            offer(
                "linux-image-6.1.0-57-cloud-amd64",
                "6.1.192-3",
                "bookworm-security",
            ),
            offer("linux-image-6.1.0-57-cloud-amd64", "6.1.192-2", "bookworm"),
            offer("linux-image-6.1.0-41-cloud-amd64", "6.1.158-1", "bookworm"),
            offer(
                "linux-image-6.12.117+deb12-cloud-amd64",
                "6.12.117-1~deb12u1",
                "bookworm-security",
            ),
            offer(
                "linux-image-6.12.38+deb13-cloud-amd64",
                "6.12.38-1",
                "trixie",
            ),
            offer("linux-image-7.2.13+deb14-cloud-amd64", "7.2.13-1", "sid"),
            offer(
                "linux-image-7.3.4+deb13-cloud-amd64",
                "7.3.4-1~bpo13+1",
                "trixie-backports",
            ),
            offer(
                "linux-image-6.19.14+deb13-cloud-amd64",
                "6.19.14-1~bpo13+1",
                "trixie-backports",
            ),
            offer(
                "linux-image-9.0.1+deb15-cloud-amd64",
                "9.0.1-1",
                "experimental",
            ),
        ]
    }

    #[test]
    fn newest_offer_per_series_in_its_own_suites() {
        let offers = madison();
        let pick = |s| newest_offer(s, &offers).map(|o| (o.package, o.version));
        assert_eq!(
            pick(Series::V5_10),
            Some((
                "linux-image-5.10.0-46-cloud-amd64".into(),
                "5.10.262-1".into()
            ))
        );
        assert_eq!(
            pick(Series::V6_1),
            Some((
                "linux-image-6.1.0-57-cloud-amd64".into(),
                "6.1.192-3".into()
            )),
            "the first (newest) version madison lists"
        );
        assert_eq!(
            pick(Series::V6_12),
            Some((
                "linux-image-6.12.117+deb12-cloud-amd64".into(),
                "6.12.117-1~deb12u1".into()
            ))
        );
        assert_eq!(
            pick(Series::Latest),
            Some((
                "linux-image-7.3.4+deb13-cloud-amd64".into(),
                "7.3.4-1~bpo13+1".into()
            )),
            "experimental is not a suite of the series; 6.12 of bookworm is not either"
        );
        let only_sid: Vec<Offer> = offers
            .iter()
            .filter(|o| o.suite == "sid")
            .cloned()
            .collect();
        assert_eq!(
            newest_offer(Series::Latest, &only_sid).map(|o| o.package),
            Some("linux-image-7.2.13+deb14-cloud-amd64".into())
        );
        assert_eq!(newest_offer(Series::V6_12, &only_sid), None);
    }

    #[test]
    fn split_packages_bring_their_parts() {
        let record = "\
Package: linux-image-7.3.4+deb13-cloud-amd64
Version: 7.3.4-1~bpo13+1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)
Pre-Depends: linux-base (>= 4.17~)
";
        let parts = kernel_parts(&apt::parse_depends(record), "7.3.4+deb13-cloud-amd64");
        let v = Some("7.3.4-1~bpo13+1".to_string());
        assert_eq!(
            parts,
            vec![
                ("linux-base-7.3.4+deb13-cloud-amd64".to_string(), v.clone()),
                (
                    "linux-binary-7.3.4+deb13-cloud-amd64".to_string(),
                    v.clone()
                ),
                ("linux-modules-7.3.4+deb13-cloud-amd64".to_string(), v),
            ]
        );
        let classic = "Package: linux-image-6.1.0-57-cloud-amd64\n\
            Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\n";
        assert!(kernel_parts(&apt::parse_depends(classic), "6.1.0-57-cloud-amd64").is_empty());
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-kernel-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn both_package_layouts_are_found() {
        let classic = tempdir("classic");
        let rel = "5.10.0-46-cloud-amd64";
        touch(&classic.join(format!("boot/vmlinuz-{rel}")));
        touch(&classic.join(format!("boot/config-{rel}")));
        touch(&classic.join(format!("lib/modules/{rel}/kernel/crypto/gcm.ko")));
        let l = find_layout(&classic, rel).unwrap();
        assert_eq!(l.vmlinuz, classic.join(format!("boot/vmlinuz-{rel}")));
        assert_eq!(l.modules, classic.join(format!("lib/modules/{rel}")));
        assert_eq!(l.config, Some(classic.join(format!("boot/config-{rel}"))));

        let split = tempdir("split");
        let rel = "7.3.4+deb13-cloud-amd64";
        touch(&split.join(format!("usr/lib/modules/{rel}/vmlinuz")));
        touch(&split.join(format!("usr/lib/modules/{rel}/config")));
        touch(&split.join(format!("usr/lib/modules/{rel}/kernel/net/tls/tls.ko.xz")));
        let l = find_layout(&split, rel).unwrap();
        assert_eq!(
            l.vmlinuz,
            split.join(format!("usr/lib/modules/{rel}/vmlinuz"))
        );
        assert_eq!(l.modules, split.join(format!("usr/lib/modules/{rel}")));
        assert_eq!(
            l.config,
            Some(split.join(format!("usr/lib/modules/{rel}/config")))
        );

        // The image package alone (its parts not downloaded): a clear error.
        let empty = tempdir("empty");
        touch(&empty.join(format!("usr/share/doc/linux-image-{rel}/copyright")));
        let e = find_layout(&empty, rel).unwrap_err().to_string();
        assert!(e.contains("usr/lib/modules"), "{e}");
        touch(&empty.join(format!("usr/lib/modules/{rel}/kernel/x.ko")));
        let e = find_layout(&empty, rel).unwrap_err().to_string();
        assert!(e.contains("vmlinuz"), "{e}");
        for d in [classic, split, empty] {
            fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn kernel_tls_in_the_config() {
        assert_eq!(
            config_tls("CONFIG_NET=y\nCONFIG_TLS=m\nCONFIG_TLS_DEVICE=y\n"),
            Some(true)
        );
        assert_eq!(config_tls("CONFIG_TLS=y\n"), Some(true));
        assert_eq!(
            config_tls("CONFIG_NET=y\n# CONFIG_TLS is not set\n"),
            Some(false)
        );
        assert_eq!(config_tls("CONFIG_TLS_DEVICE=y\n"), None);
    }

    #[test]
    fn compressed_modules_are_recognised() {
        assert_eq!(
            decompressor("kernel/net/tls/tls.ko.xz").map(|t| t[0]),
            Some("xz")
        );
        assert_eq!(
            decompressor("kernel/net/tls/tls.ko.zst").map(|t| t[0]),
            Some("zstd")
        );
        assert!(decompressor("kernel/net/tls/tls.ko.zst").is_some_and(|t| t.contains(&"--rm")));
        assert_eq!(
            decompressor("kernel/net/tls/tls.ko.gz").map(|t| t[0]),
            Some("gzip")
        );
        assert_eq!(decompressor("kernel/net/tls/tls.ko"), None);
    }

    #[test]
    fn cache_keeps_one_kernel_per_series_and_drops_the_old_layout() {
        let cache = tempdir("cache");
        // The layout before the matrix: kernels straight under cache/.
        touch(&cache.join("linux-image-6.1.0-57-cloud-amd64_6.1.192-3_amd64.deb"));
        touch(&cache.join("linux-image-6.1.0-57-cloud-amd64/.unpacked"));
        let series = cache.join("latest");
        touch(&series.join("linux-image-7.2.13+deb14-cloud-amd64/root/.unpacked"));
        touch(&series.join("linux-image-7.3.4+deb13-cloud-amd64/root/.unpacked"));
        touch(&series.join("linux-image-7.3.5+deb13-cloud-amd64/.download/x.deb"));
        remove_old_layout(&cache);
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&cache), ["latest"]);

        let why = anyhow::anyhow!("apt-get download failed");
        assert_eq!(
            cached_fallback(Series::Latest, &series, &why).unwrap(),
            "linux-image-7.3.4+deb13-cloud-amd64",
            "the newest complete kernel; an interrupted download does not count"
        );
        let e = cached_fallback(Series::V5_10, &cache.join("5.10"), &why).unwrap_err();
        assert!(
            format!("{e:#}").contains("apt-get download failed"),
            "{e:#}"
        );

        prune_others(&series, "linux-image-7.3.4+deb13-cloud-amd64");
        assert_eq!(names(&series), ["linux-image-7.3.4+deb13-cloud-amd64"]);
        fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn every_suite_once() {
        let suites = all_suites();
        for s in Series::ALL {
            for suite in s.suites() {
                assert_eq!(suites.iter().filter(|x| *x == suite).count(), 1, "{suite}");
            }
        }
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
