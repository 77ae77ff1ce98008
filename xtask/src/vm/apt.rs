//! The project's own apt state, for the guest kernels of other Debian releases.
//!
//! The kernels come from suites the host does not use (bullseye, trixie-backports, sid),
//! served by the same mirrors as the host's own: the mirror URIs are read from the host's
//! apt sources (deb822 `*.sources` and one-line `*.list` / `sources.list`), never written
//! into the code. Adding those suites to the host's sources would change what the host
//! installs and upgrades, so the project keeps a separate state under `target/vm/apt/`:
//!
//! ```text
//! apt.conf        passed with `-c`: the Dir:: settings below, no DEP-11/Contents/
//!                 Translation downloads, no host update hooks; the host's
//!                 /etc/apt/apt.conf.d (proxies, Check-Valid-Until...) still applies
//! sources.list    generated: the series' suites on the host's mirrors
//! parts/          empty (the host's sources.list.d must not leak in)
//! lists/          Packages indexes of `apt-get update`
//! cache/          apt's binary cache (pkgcache.bin, ~90 MB), for quick searches
//! updated         stamp of the last successful `apt-get update`
//! ```

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// One entry of the host's apt sources (a deb822 stanza or a one-line `deb` line).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    /// `deb`, `deb-src`.
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// A keyring path; None when absent or given as an inline key block.
    pub signed_by: Option<String>,
}

/// deb822 `.sources` text: stanzas separated by blank lines, `Key: value` fields,
/// continuation lines starting with a blank, `#` comment lines. Stanzas with
/// `Enabled: no` are left out, as apt does.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut flush = |fields: &mut Vec<(String, String)>| {
        if fields.is_empty() {
            return;
        }
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        let words = |key: &str| -> Vec<String> {
            get(key)
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        let enabled = get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        if enabled {
            sources.push(Source {
                types: words("Types"),
                uris: words("URIs"),
                suites: words("Suites"),
                components: words("Components"),
                signed_by: get("Signed-By").and_then(keyring_path),
            });
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut fields);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    flush(&mut fields);
    sources
}

/// A Signed-By value that is one keyring path (an inline key block cannot be carried
/// into a one-line entry; apt's trusted.gpg.d keys then decide).
fn keyring_path(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty() && !v.contains(char::is_whitespace) && !v.starts_with("-----"))
        .then(|| v.to_string())
}

/// One-line format: `deb [opt=val ...] uri suite [component...]`, `#` comments.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((kind, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if kind != "deb" && kind != "deb-src" {
            continue;
        }
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            for opt in opts.split_whitespace() {
                if let Some(v) = opt.strip_prefix("signed-by=") {
                    signed_by = keyring_path(v);
                }
            }
            rest = after;
        }
        let mut words = rest.split_whitespace().map(String::from);
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        sources.push(Source {
            types: vec![kind.to_string()],
            uris: vec![uri],
            suites: vec![suite],
            components: words.collect(),
            signed_by,
        });
    }
    sources
}

/// The host's apt sources under `etc` (normally /etc/apt): `sources.list`, then
/// `sources.list.d/*.list` and `*.sources` in name order. Other files there
/// (`*.disabled`, `*.save`, `*.list.disabled-by-...`) are ignored, as apt ignores them.
pub fn host_sources(etc: &Path) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    let main = etc.join("sources.list");
    if main.is_file() {
        let text =
            fs::read_to_string(&main).with_context(|| format!("reading {}", main.display()))?;
        sources.extend(parse_one_line(&text));
    }
    let parts = etc.join("sources.list.d");
    let mut files: Vec<PathBuf> = match fs::read_dir(&parts) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let deb822 = name.ends_with(".sources");
        if !deb822 && !name.ends_with(".list") {
            continue;
        }
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        sources.extend(if deb822 {
            parse_deb822(&text)
        } else {
            parse_one_line(&text)
        });
    }
    Ok(sources)
}

/// A Debian mirror as the host uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub signed_by: Option<String>,
}

/// The host's Debian archive mirror and its security mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    pub archive: Mirror,
    pub security: Option<Mirror>,
}

/// Suites of the security archive: `bookworm-security`, and `buster/updates` before it.
pub fn is_security_suite(suite: &str) -> bool {
    suite.ends_with("-security") || suite.ends_with("/updates")
}

/// Debian's own archive among the host's sources: `deb` entries of the host's release
/// (`codename`, `codename-updates`, `codename-security`...) or a release alias. Third-party
/// repositories (their own suite names) are not Debian's mirror. The first entry of each
/// kind wins, as apt lists them.
pub fn debian_mirrors(sources: &[Source], codename: Option<&str>) -> Option<Mirrors> {
    const ALIASES: &[&str] = &[
        "oldoldstable",
        "oldstable",
        "stable",
        "testing",
        "unstable",
        "sid",
        "experimental",
    ];
    let is_debian_suite = |suite: &str| {
        let base = suite.split(['-', '/']).next().unwrap_or(suite);
        codename == Some(base) || ALIASES.contains(&base)
    };
    let mut archive = None;
    let mut security = None;
    for s in sources {
        if !s.types.iter().any(|t| t == "deb") {
            continue;
        }
        let Some(uri) = s.uris.first() else { continue };
        let mirror = || Mirror {
            uri: uri.trim_end_matches('/').to_string(),
            signed_by: s.signed_by.clone(),
        };
        for suite in s.suites.iter().filter(|s| is_debian_suite(s)) {
            if is_security_suite(suite) {
                security.get_or_insert_with(mirror);
            } else {
                archive.get_or_insert_with(mirror);
            }
        }
    }
    Some(Mirrors {
        archive: archive?,
        security,
    })
}

/// `VERSION_CODENAME` of an os-release file.
pub fn os_codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let v = l
            .strip_prefix("VERSION_CODENAME=")?
            .trim()
            .trim_matches('"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// The project's sources.list: every suite on the mirror the host uses for that kind of
/// suite, `main` only (the kernels are there). A security suite without a security mirror
/// is left out with a note; the release suite still has older builds.
pub fn sources_list(mirrors: &Mirrors, suites: &[&str]) -> String {
    let mut out = String::from(
        "# Generated by cargo xtask (xtask/src/vm/apt.rs) from the host's apt sources:\n\
         # the suites of the guest kernels on the mirrors the host already uses.\n",
    );
    for suite in suites {
        let mirror = if is_security_suite(suite) {
            mirrors.security.as_ref()
        } else {
            Some(&mirrors.archive)
        };
        match mirror {
            Some(m) => {
                let opts = m
                    .signed_by
                    .as_ref()
                    .map(|k| format!("[signed-by={k}] "))
                    .unwrap_or_default();
                out.push_str(&format!("deb {opts}{} {suite} main\n", m.uri));
            }
            None => out.push_str(&format!(
                "# {suite}: the host's apt sources name no security mirror\n"
            )),
        }
    }
    out
}

/// One version of a package in one suite, from `apt-cache madison`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub package: String,
    pub version: String,
    pub suite: String,
}

/// `apt-cache madison` lines:
/// `linux-image-X | 7.3.4-1~bpo13+1 | http://mirror/debian trixie-backports/main amd64 Packages`.
pub fn parse_madison(text: &str) -> Vec<Offer> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split('|').map(str::trim);
            let (package, version, origin) = (parts.next()?, parts.next()?, parts.next()?);
            let mut words = origin.split_whitespace();
            let _uri = words.next()?;
            let dist = words.next()?;
            // `bookworm-security/main` -> `bookworm-security`; components have no '/'.
            let suite = dist.rsplit_once('/').map_or(dist, |(s, _)| s);
            if package.is_empty() || version.is_empty() || words.next_back() != Some("Packages") {
                return None;
            }
            Some(Offer {
                package: package.to_string(),
                version: version.to_string(),
                suite: suite.to_string(),
            })
        })
        .collect()
}

/// The package names (with `=version` when pinned) of the `Depends` and `Pre-Depends`
/// fields of the first record of `apt-cache show` output. Alternatives (`a | b`) all count.
pub fn parse_depends(record: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut in_record = false;
    for line in record.lines() {
        if line.trim().is_empty() {
            if in_record {
                break;
            }
            continue;
        }
        in_record = true;
        let Some(value) = line
            .strip_prefix("Depends:")
            .or_else(|| line.strip_prefix("Pre-Depends:"))
        else {
            continue;
        };
        for dep in value.split([',', '|']) {
            let dep = dep.trim();
            let name = dep.split([' ', '(']).next().unwrap_or("").trim();
            // `name:any` is a multi-arch qualifier, not part of the name.
            let name = name.split(':').next().unwrap_or(name);
            if name.is_empty() {
                continue;
            }
            let pinned = dep
                .split_once("(=")
                .and_then(|(_, v)| v.split(')').next())
                .map(|v| v.trim().to_string());
            out.push((name.to_string(), pinned));
        }
    }
    out
}

/// How old the project's package lists may get before `apt-get update` runs again:
/// Debian publishes a new kernel every few weeks, a test run should not wait for apt.
pub const MAX_LIST_AGE: Duration = Duration::from_secs(6 * 3600);

/// The project's apt state in one directory.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Creates or updates the state for `suites`, on the mirrors of the host's apt
    /// sources. A changed sources.list makes the lists stale.
    pub fn open(dir: &Path, suites: &[&str]) -> Result<Apt> {
        let sources = host_sources(Path::new("/etc/apt"))?;
        let codename = fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| os_codename(&t));
        let mirrors = debian_mirrors(&sources, codename.as_deref()).context(
            "the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/) name no \
             Debian archive mirror; the guest kernels are fetched from the host's mirror",
        )?;
        for sub in ["lists/partial", "cache/archives/partial", "parts"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let apt = Apt {
            dir: dir.to_path_buf(),
        };
        let list = sources_list(&mirrors, suites);
        let list_path = dir.join("sources.list");
        if fs::read_to_string(&list_path).ok().as_deref() != Some(list.as_str()) {
            fs::write(&list_path, &list)
                .with_context(|| format!("writing {}", list_path.display()))?;
            let _ = fs::remove_file(apt.stamp());
        }
        let conf = apt_conf(dir)?;
        let conf_path = dir.join("apt.conf");
        if fs::read_to_string(&conf_path).ok().as_deref() != Some(conf.as_str()) {
            fs::write(&conf_path, conf)
                .with_context(|| format!("writing {}", conf_path.display()))?;
        }
        Ok(apt)
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("updated")
    }

    pub fn sources_path(&self) -> PathBuf {
        self.dir.join("sources.list")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-c").arg(self.dir.join("apt.conf"));
        c
    }

    /// `apt-get update` of the project's lists when they are missing, older than
    /// `max_age` or for other sources. An error (offline, mirror trouble) leaves the old
    /// lists in place; the caller decides whether they or the kernel cache will do.
    pub fn refresh(&self, max_age: Duration) -> Result<()> {
        let age = fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|a| a < max_age) {
            return Ok(());
        }
        eprintln!(
            "vm: updating the project's package lists ({})",
            self.sources_path().display()
        );
        cmd::run(self.command("apt-get").args(["-q", "update"]))
            .context("apt-get update of the project's apt state")?;
        fs::write(self.stamp(), b"").with_context(|| format!("writing {}", self.stamp().display()))
    }

    /// Package names matching `regex` (`apt-cache search --names-only`).
    pub fn search(&self, regex: &str) -> Result<Vec<String>> {
        let out = cmd::stdout(
            self.command("apt-cache")
                .args(["search", "--names-only", regex]),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect())
    }

    /// Every version of `packages` in every suite (`apt-cache madison`).
    pub fn offers(&self, packages: &[String]) -> Result<Vec<Offer>> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        let out = cmd::stdout(self.command("apt-cache").arg("madison").args(packages))?;
        Ok(parse_madison(&out))
    }

    /// The dependencies of one version of a package (`apt-cache show pkg=version`).
    pub fn depends(&self, package: &str, version: &str) -> Result<Vec<(String, Option<String>)>> {
        let out = cmd::stdout(
            self.command("apt-cache")
                .arg("show")
                .arg(format!("{package}={version}")),
        )?;
        Ok(parse_depends(&out))
    }

    /// Downloads `package` from `suite` and every dependency the host lacks into `dest`
    /// (`apt-get install --download-only` against the host's dpkg status, with `dest` as
    /// the archives directory), installing nothing. For tools the bench unpacks under
    /// target/ (bpftrace): what the host already has is taken from the host.
    pub fn download_missing(&self, package: &str, suite: &str, dest: &Path) -> Result<()> {
        let partial = dest.join("partial");
        fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        // apt wants the trailing slash on a directory option.
        let archives = format!("Dir::Cache::Archives={}/", dest.display());
        cmd::run(
            self.command("apt-get")
                .args(["-q", "-y", "--no-install-recommends", "--download-only"])
                .args(["-o", &archives, "-t", suite, "install", package])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("downloading {package} from {suite} with the project's apt state"))
    }

    /// `apt-get download` of `specs` (`name` or `name=version`) into `dest`.
    pub fn download(&self, specs: &[String], dest: &Path) -> Result<()> {
        cmd::run(
            self.command("apt-get")
                .args(["-q", "download"])
                .args(specs)
                .current_dir(dest),
        )
    }
}

/// The `-c` configuration of the project's apt state. Read after the host's apt.conf.d,
/// so only these settings differ from the host's.
fn apt_conf(dir: &Path) -> Result<String> {
    let d = dir.to_string_lossy();
    if d.contains('"') {
        bail!("cannot use {d} for the apt state: apt.conf strings cannot hold a '\"'");
    }
    Ok(format!(
        r#"// Generated by cargo xtask (xtask/src/vm/apt.rs): the project's own apt state for
// the guest kernels. Passed with -c, after the host's /etc/apt/apt.conf.d.
Dir::Etc::SourceList "{d}/sources.list";
Dir::Etc::SourceParts "{d}/parts";
Dir::State::Lists "{d}/lists";
Dir::State::status "/var/lib/dpkg/status";
Dir::Cache "{d}/cache";
// Some hosts (Docker images) turn the binary cache off; searches are 10x faster with it.
// The source cache would only duplicate it (90 MB) to speed up its own rebuild.
Dir::Cache::pkgcache "pkgcache.bin";
Dir::Cache::srcpkgcache "";
// Only the Packages indexes are needed: no AppStream, Contents or translations.
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Acquire::Languages "none";
// The host's update hooks (AppStream, command-not-found) act on the host's lists.
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This build machine's /etc/apt/sources.list.d/debian.sources.
    const DEB822: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_sources() {
        let s = parse_deb822(DEB822);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].types, ["deb"]);
        assert_eq!(s[0].uris, ["http://deb.debian.org/debian"]);
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(s[0].components, ["main"]);
        assert_eq!(
            s[0].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert_eq!(s[1].suites, ["bookworm-security"]);

        // Disabled stanzas, inline keys, lower-case keys, several blank lines.
        let other = "\
types: deb deb-src
uris: https://mirror.example/debian/
suites: trixie
components: main contrib
signed-by:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBF...
 -----END PGP PUBLIC KEY BLOCK-----


Enabled: no
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
";
        let s = parse_deb822(other);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].types, ["deb", "deb-src"]);
        assert_eq!(s[0].uris, ["https://mirror.example/debian/"]);
        assert_eq!(s[0].signed_by, None, "inline key blocks are not carried");
    }

    #[test]
    fn one_line_sources() {
        let text = "\
# deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian bookworm main contrib non-free-firmware
deb-src http://deb.debian.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://security.debian.org/debian-security bookworm-security main # security
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
deb [broken http://x y
deb
";
        let s = parse_one_line(text);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0].suites, ["bookworm"]);
        assert_eq!(s[0].components, ["main", "contrib", "non-free-firmware"]);
        assert_eq!(s[1].types, ["deb-src"]);
        assert_eq!(s[2].uris, ["http://security.debian.org/debian-security"]);
        assert_eq!(s[2].components, ["main"]);
        assert_eq!(
            s[2].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
    }

    #[test]
    fn mirrors_come_from_the_hosts_debian_entries() {
        let mut sources = parse_one_line(
            "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n\
             deb https://deb.nodesource.com/node_20.x nodistro main\n\
             deb-src http://src.example/debian bookworm main\n",
        );
        sources.extend(parse_deb822(DEB822));
        let m = debian_mirrors(&sources, Some("bookworm")).unwrap();
        assert_eq!(m.archive.uri, "http://deb.debian.org/debian");
        assert_eq!(
            m.security.as_ref().map(|s| s.uri.as_str()),
            Some("http://deb.debian.org/debian-security")
        );
        // A sid host: no codename in os-release, the alias is enough; no security mirror.
        let sid = parse_one_line("deb http://ftp.example/debian/ sid main\n");
        let m = debian_mirrors(&sid, None).unwrap();
        assert_eq!(m.archive.uri, "http://ftp.example/debian");
        assert_eq!(m.security, None);
        // Old-style security suite.
        let buster = parse_one_line(
            "deb http://a.example/debian buster main\n\
             deb http://s.example/debian-security buster/updates main\n",
        );
        let m = debian_mirrors(&buster, Some("buster")).unwrap();
        assert_eq!(
            m.security.map(|s| s.uri),
            Some("http://s.example/debian-security".to_string())
        );
        // Only third-party repositories: no Debian mirror.
        assert_eq!(debian_mirrors(&sources[..2], Some("bookworm")), None);
    }

    #[test]
    fn generated_sources_list() {
        let m = debian_mirrors(&parse_deb822(DEB822), Some("bookworm")).unwrap();
        let list = sources_list(
            &m,
            &["bullseye", "bullseye-security", "trixie-backports", "sid"],
        );
        let entries: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
        let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
        assert_eq!(
            entries,
            [
                format!("deb {key} http://deb.debian.org/debian bullseye main"),
                format!("deb {key} http://deb.debian.org/debian-security bullseye-security main"),
                format!("deb {key} http://deb.debian.org/debian trixie-backports main"),
                format!("deb {key} http://deb.debian.org/debian sid main"),
            ]
        );
        let no_security = Mirrors {
            archive: Mirror {
                uri: "http://a.example/debian".into(),
                signed_by: None,
            },
            security: None,
        };
        let list = sources_list(&no_security, &["bullseye", "bullseye-security"]);
        assert!(list.contains("deb http://a.example/debian bullseye main\n"));
        assert!(list.contains("# bullseye-security: "));
        assert!(!list.contains("deb http://a.example/debian bullseye-security"));
    }

    #[test]
    fn host_sources_reads_only_what_apt_reads() {
        let dir = std::env::temp_dir().join(format!("xtask-apt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sources.list.d")).unwrap();
        fs::write(
            dir.join("sources.list"),
            "deb http://one.example/debian bookworm main\n",
        )
        .unwrap();
        fs::write(dir.join("sources.list.d/debian.sources"), DEB822).unwrap();
        fs::write(
            dir.join("sources.list.d/google-cloud-sdk.list.disabled-by-farm"),
            "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
        )
        .unwrap();
        fs::write(
            dir.join("sources.list.d/nodesource.sources.disabled-by-farm"),
            "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n",
        )
        .unwrap();
        fs::write(
            dir.join("sources.list.d/extra.list"),
            "deb http://two.example/debian trixie main\n",
        )
        .unwrap();
        let s = host_sources(&dir).unwrap();
        let uris: Vec<&str> = s.iter().map(|s| s.uris[0].as_str()).collect();
        assert_eq!(
            uris,
            [
                "http://one.example/debian",
                "http://deb.debian.org/debian",
                "http://deb.debian.org/debian-security",
                "http://two.example/debian",
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
        assert!(host_sources(&dir).unwrap().is_empty());
    }

    #[test]
    fn codename() {
        assert_eq!(
            os_codename("NAME=\"Debian GNU/Linux\"\nVERSION_CODENAME=bookworm\nID=debian\n")
                .as_deref(),
            Some("bookworm")
        );
        assert_eq!(
            os_codename("PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\n"),
            None
        );
    }

    #[test]
    fn madison_lines() {
        let out = "\
linux-image-7.3.4+deb13-cloud-amd64 | 7.3.4-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-7.2.13+deb14-cloud-amd64 |   7.2.13-1 | http://deb.debian.org/debian sid/main amd64 Packages
linux-image-5.10.0-46-cloud-amd64 | 5.10.262-1 | http://deb.debian.org/debian-security bullseye-security/main amd64 Packages
     linux | 6.1.158-1 | http://deb.debian.org/debian bookworm/main Sources
garbage
";
        let offers = parse_madison(out);
        assert_eq!(offers.len(), 3, "{offers:?}");
        assert_eq!(
            offers[0],
            Offer {
                package: "linux-image-7.3.4+deb13-cloud-amd64".into(),
                version: "7.3.4-1~bpo13+1".into(),
                suite: "trixie-backports".into(),
            }
        );
        assert_eq!(offers[1].suite, "sid");
        assert_eq!(offers[1].version, "7.2.13-1");
        assert_eq!(offers[2].suite, "bullseye-security");
    }

    #[test]
    fn depends_of_split_and_classic_packages() {
        let split = "\
Package: linux-image-7.3.4+deb13-cloud-amd64
Version: 7.3.4-1~bpo13+1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)
Pre-Depends: linux-base (>= 4.17~)
Description: Linux 7.3.4 for x86-64 cloud

Package: linux-image-7.3.4+deb13-cloud-amd64
Depends: second-record-ignored
";
        let deps = parse_depends(split);
        let v = Some("7.3.4-1~bpo13+1".to_string());
        assert_eq!(
            deps,
            vec![
                ("dracut".to_string(), None),
                ("initramfs-tools".to_string(), None),
                ("linux-initramfs-tool".to_string(), None),
                ("linux-base-7.3.4+deb13-cloud-amd64".to_string(), v.clone()),
                (
                    "linux-binary-7.3.4+deb13-cloud-amd64".to_string(),
                    v.clone()
                ),
                ("linux-modules-7.3.4+deb13-cloud-amd64".to_string(), v),
                ("linux-base".to_string(), None),
            ]
        );
        let classic = "Package: linux-image-5.10.0-46-cloud-amd64\n\
            Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\n";
        let names: Vec<String> = parse_depends(classic).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "kmod",
                "linux-base",
                "initramfs-tools",
                "linux-initramfs-tool"
            ]
        );
    }

    #[test]
    fn apt_conf_points_every_state_directory_at_the_project() {
        let conf = apt_conf(Path::new("/w/target/vm/apt")).unwrap();
        for needle in [
            "Dir::Etc::SourceList \"/w/target/vm/apt/sources.list\";",
            "Dir::Etc::SourceParts \"/w/target/vm/apt/parts\";",
            "Dir::State::Lists \"/w/target/vm/apt/lists\";",
            "Dir::Cache \"/w/target/vm/apt/cache\";",
            "#clear APT::Update::Post-Invoke-Success;",
        ] {
            assert!(conf.contains(needle), "missing {needle}");
        }
        assert!(apt_conf(Path::new("/odd\"dir")).is_err());
    }
}
