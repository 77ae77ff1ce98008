//! The kernel series the guests boot: the one place that knows, per series, its label,
//! its Debian package name pattern, the apt suites that carry it, and whether the kernel
//! has kernel TLS. Everything else (resolution, cache, /init, reports) asks here.

use clap::ValueEnum;

/// A kernel series of the test matrix. Debian bumps the ABI number or the patch level
/// with every update, so a series is a name pattern, resolved to the newest package on
/// every run (vm/kernel.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Series {
    /// 5.10 (bullseye): no kernel TLS at all (`# CONFIG_TLS is not set`): the tracer's
    /// fallbacks on an older kernel with kprobes.
    #[value(name = "5.10")]
    V5_10,
    /// 6.1 (bookworm): tls_sw_sendpage + do_tcp_sendpages (before sendpage was removed).
    #[value(name = "6.1")]
    V6_1,
    /// 6.12 (bookworm security updates): tls_sw_sendmsg with MSG_SPLICE_PAGES +
    /// tcp_sendmsg_locked.
    #[value(name = "6.12")]
    V6_12,
    /// The newest Debian cloud kernel of trixie-backports and sid, so that the matrix
    /// moves forward by itself (split packages, compressed modules, inlined statics).
    #[value(name = "latest")]
    Latest,
}

impl Series {
    pub const ALL: [Series; 4] = [Series::V5_10, Series::V6_1, Series::V6_12, Series::Latest];

    /// What reports, `KTLS_TRACE_GUEST` and `--kernel` call the series.
    pub fn label(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
            Series::Latest => "latest",
        }
    }

    /// Whether the series' kernels are built with kernel TLS (`CONFIG_TLS`). On one that
    /// is, a failed `modprobe tls` in the guest is a failure; on one that is not, the
    /// guest says so (`KT-TLS none`) and the tests decide what to skip.
    pub fn has_ktls(self) -> bool {
        !matches!(self, Series::V5_10)
    }

    /// The series' kernel version, where it is fixed (the newest moves on).
    pub fn fixed_version(self) -> Option<(u32, u32)> {
        match self {
            Series::V5_10 => Some((5, 10)),
            Series::V6_1 => Some((6, 1)),
            Series::V6_12 => Some((6, 12)),
            Series::Latest => None,
        }
    }

    /// May a test skip on this series, given the reason it printed (`KT-SKIP <test>:
    /// <why>`)? Only for the one capability the series is chosen to have or lack, kernel
    /// TLS (a kTLS test on 5.10, a test of the no-TLS explanations on the others), and for
    /// what a kernel older than a named release cannot do (`kernels before 6.7 ...`) on a
    /// series that is older. Every guest has every tool and every other capability the
    /// tests need, so any other skip hides a broken image or a broken test and fails the
    /// run.
    pub fn allows_skip(self, reason: &str) -> bool {
        if let Some(rest) = reason.strip_prefix("kernels before ") {
            let named = rest.split_whitespace().next().and_then(|v| {
                let (a, b) = v.split_once('.')?;
                Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
            });
            return matches!((self.fixed_version(), named), (Some(k), Some(n)) if k < n);
        }
        if self.has_ktls() {
            reason.ends_with("has kernel TLS") && !reason.contains("no kernel TLS")
        } else {
            reason.contains("no kernel TLS")
        }
    }

    /// The Debian suites that carry the series, from the mirrors of the host's own apt
    /// sources (vm/apt.rs). Point releases land in the release suite, security updates in
    /// `-security`, which usually holds the newest build. When Debian releases forky,
    /// the newest kernels move to forky-backports: add it to `Latest`.
    pub fn suites(self) -> &'static [&'static str] {
        match self {
            Series::V5_10 => &["bullseye", "bullseye-security"],
            Series::V6_1 | Series::V6_12 => &["bookworm", "bookworm-security"],
            Series::Latest => &["trixie-backports", "sid"],
        }
    }

    /// A loose `apt-cache search --names-only` regex (POSIX ERE); [`Series::version`]
    /// does the exact match.
    pub fn search_regex(self) -> &'static str {
        match self {
            Series::V5_10 => r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$",
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$",
            Series::Latest => r"^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-cloud-amd64$",
        }
    }

    /// The comparable version of a package name of this series, or None for any other
    /// package (other flavours, `-unsigned`, `-dbg`, meta packages, file names). Compared
    /// numerically, field by field: `6.1.0-9` < `6.1.0-56`, `7.2.13` < `7.3.4`.
    ///
    /// - 5.10: `linux-image-5.10.0-<N>-cloud-amd64` -> [N]
    /// - 6.1: `linux-image-6.1.0-<N>-cloud-amd64` -> [N]
    /// - 6.12: `linux-image-6.12.<N>+deb12-cloud-amd64` -> [N]
    /// - latest: `linux-image-<maj>.<min>.<patch>+deb<NN>-cloud-amd64`
    ///   -> [maj, min, patch, NN] (the same upstream build for a newer release wins)
    pub fn version(self, package: &str) -> Option<Vec<u64>> {
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let middle = |prefix: &str, suffix: &str| -> Option<&str> {
            package.strip_prefix(prefix)?.strip_suffix(suffix)
        };
        match self {
            Series::V5_10 => Some(vec![number(middle(
                "linux-image-5.10.0-",
                "-cloud-amd64",
            )?)?]),
            Series::V6_1 => Some(vec![number(middle("linux-image-6.1.0-", "-cloud-amd64")?)?]),
            Series::V6_12 => Some(vec![number(middle(
                "linux-image-6.12.",
                "+deb12-cloud-amd64",
            )?)?]),
            Series::Latest => {
                let (upstream, deb) = middle("linux-image-", "-cloud-amd64")?.split_once("+deb")?;
                let mut key = upstream
                    .split('.')
                    .map(number)
                    .collect::<Option<Vec<u64>>>()?;
                if key.len() != 3 {
                    return None;
                }
                key.push(number(deb)?);
                Some(key)
            }
        }
    }

    /// The kernel release (`uname -r`, the modules directory) of a package name of the
    /// series: `linux-image-<release>`.
    pub fn release(package: &str) -> Option<&str> {
        package.strip_prefix("linux-image-")
    }
}

/// `--kernel` of test, vm-test and bench: one series or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelChoice {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    #[value(name = "latest")]
    Latest,
    All,
}

impl KernelChoice {
    pub fn series(self) -> Vec<Series> {
        match self {
            KernelChoice::V5_10 => vec![Series::V5_10],
            KernelChoice::V6_1 => vec![Series::V6_1],
            KernelChoice::V6_12 => vec![Series::V6_12],
            KernelChoice::Latest => vec![Series::Latest],
            KernelChoice::All => Series::ALL.to_vec(),
        }
    }
}

/// The newest package of the series among `names`.
pub fn newest_package<'a>(series: Series, names: impl Iterator<Item = &'a str>) -> Option<String> {
    names
        .filter_map(|n| series.version(n).map(|v| (v, n)))
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, n)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names as `apt-cache search` lists them from bullseye(-security), bookworm(-security),
    /// trixie-backports and sid on 2026-12-02, plus the traps around them.
    const APT_NAMES: &[&str] = &[
        "linux-image-5.10.0-30-cloud-amd64",
        "linux-image-5.10.0-32-cloud-amd64",
        "linux-image-5.10.0-46-cloud-amd64",
        "linux-image-5.10.0-46-cloud-amd64-dbg",
        "linux-image-5.10.0-47-cloud-amd64-unsigned",
        "linux-image-5.10.0-9-cloud-amd64",
        "linux-image-6.1.0-0.deb11.52-cloud-amd64",
        "linux-image-6.1-cloud-amd64",
        "linux-image-6.1.0-47-cloud-amd64",
        "linux-image-6.1.0-47-cloud-amd64-dbg",
        "linux-image-6.1.0-58-cloud-amd64-unsigned",
        "linux-image-6.1.0-9-cloud-amd64",
        "linux-image-6.1.0-57-cloud-amd64",
        "linux-image-6.1.0-59-amd64",
        "linux-image-6.1.0-59-rt-amd64",
        "linux-image-cloud-amd64",
        "linux-image-cloud-amd64-dbg",
        "linux-image-6.12.9+deb12-cloud-amd64",
        "linux-image-6.12.117+deb12-cloud-amd64",
        "linux-image-6.12.117+deb12-cloud-amd64-dbg",
        "linux-image-6.12.118+deb12-cloud-amd64-unsigned",
        "linux-image-6.12.120+deb12-amd64",
        "linux-image-6.12.x+deb12-cloud-amd64",
        "linux-image-6.16.12+deb13-cloud-amd64",
        "linux-image-6.19.14+deb13-cloud-amd64",
        "linux-image-7.0.13+deb13-cloud-amd64",
        "linux-image-7.2.9+deb13-cloud-amd64",
        "linux-image-7.2.13+deb14-cloud-amd64",
        "linux-image-7.2.13+deb14-cloud-amd64-dbg",
        "linux-image-7.3.4+deb13-cloud-amd64",
        "linux-image-7.3.4+deb13-cloud-amd64-dbg",
        "linux-image-7.3.5+deb13-cloud-amd64-unsigned",
        "linux-image-7.10+deb13-cloud-amd64",
        "linux-image-7.3.4+deb13-amd64",
        "linux-binary-7.3.9+deb13-cloud-amd64",
        "linux-modules-7.3.9+deb13-cloud-amd64",
    ];

    #[test]
    fn picks_the_newest_signed_cloud_kernel_of_each_series() {
        let newest = |s| newest_package(s, APT_NAMES.iter().copied());
        assert_eq!(
            newest(Series::V5_10).as_deref(),
            Some("linux-image-5.10.0-46-cloud-amd64"),
            "numeric (not lexical) order; -dbg and -unsigned skipped"
        );
        assert_eq!(
            newest(Series::V6_1).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64"),
            "other flavours, meta packages and the bullseye backport (0.deb11.N) skipped"
        );
        assert_eq!(
            newest(Series::V6_12).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(
            newest(Series::Latest).as_deref(),
            Some("linux-image-7.3.4+deb13-cloud-amd64"),
            "7.3.4 (trixie-backports) beats 7.2.13 (sid) although deb14 > deb13"
        );
        assert_eq!(newest_package(Series::V6_12, std::iter::empty()), None);
    }

    #[test]
    fn versions() {
        assert_eq!(
            Series::V6_1.version("linux-image-6.1.0-56-cloud-amd64"),
            Some(vec![56])
        );
        assert_eq!(
            Series::V5_10.version("linux-image-5.10.0-46-cloud-amd64"),
            Some(vec![46])
        );
        assert_eq!(
            Series::V6_12.version("linux-image-6.12.117+deb12-cloud-amd64"),
            Some(vec![117])
        );
        assert_eq!(
            Series::Latest.version("linux-image-7.3.4+deb13-cloud-amd64"),
            Some(vec![7, 3, 4, 13])
        );
        assert!(
            Series::Latest.version("linux-image-7.2.13+deb14-cloud-amd64")
                < Series::Latest.version("linux-image-7.3.4+deb13-cloud-amd64")
        );
        assert!(
            Series::Latest.version("linux-image-7.3.4+deb13-cloud-amd64")
                < Series::Latest.version("linux-image-7.3.4+deb14-cloud-amd64")
        );
        // 6.12 names also have the latest shape; suites tell them apart (vm/kernel.rs).
        assert_eq!(
            Series::Latest.version("linux-image-6.12.117+deb12-cloud-amd64"),
            Some(vec![6, 12, 117, 12])
        );
        for not in [
            "linux-image-6.1.0--cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-0.deb11.52-cloud-amd64",
        ] {
            assert_eq!(Series::V6_1.version(not), None, "{not}");
        }
        for not in [
            "linux-image-7.3+deb13-cloud-amd64",
            "linux-image-7.3.4.1+deb13-cloud-amd64",
            "linux-image-7.3.4+deb-cloud-amd64",
            "linux-image-7.3.4+bpo-cloud-amd64",
            "linux-image-7.3.4+deb13-cloud-amd64-dbg",
            "linux-binary-7.3.4+deb13-cloud-amd64",
        ] {
            assert_eq!(Series::Latest.version(not), None, "{not}");
        }
        assert_eq!(
            Series::release("linux-image-7.3.4+deb13-cloud-amd64"),
            Some("7.3.4+deb13-cloud-amd64")
        );
    }

    #[test]
    fn only_the_kernel_tls_skips_are_allowed() {
        let no_tls = "kernel 5.10.0-46-cloud-amd64 has no kernel TLS";
        let has_tls = "this kernel has kernel TLS";
        assert!(Series::V5_10.allows_skip(no_tls));
        assert!(!Series::V5_10.allows_skip(has_tls));
        for s in [Series::V6_1, Series::V6_12, Series::Latest] {
            assert!(s.allows_skip(has_tls));
            assert!(!s.allows_skip(no_tls));
            assert!(!s.allows_skip("tmux not found"));
        }
        assert!(!Series::V5_10.allows_skip("no sock_send_length tracepoint"));
        // What an older kernel cannot do, only where the series is older.
        let old = "kernels before 6.7 do not count the calls a kprobe program misses";
        assert!(Series::V5_10.allows_skip(old));
        assert!(Series::V6_1.allows_skip(old));
        assert!(!Series::V6_12.allows_skip(old));
        assert!(!Series::Latest.allows_skip(old));
        assert!(!Series::V6_1.allows_skip("kernels before six do not"));
    }

    #[test]
    fn every_series_is_consistent() {
        for s in Series::ALL {
            assert!(!s.suites().is_empty(), "{s:?}");
            assert_eq!(
                <Series as ValueEnum>::from_str(s.label(), false).ok(),
                Some(s),
                "--kernel {} must name the series whose label it is",
                s.label()
            );
            assert_eq!(
                <KernelChoice as ValueEnum>::from_str(s.label(), false)
                    .ok()
                    .map(|c| c.series()),
                Some(vec![s])
            );
        }
        assert!(!Series::V5_10.has_ktls());
        assert!(Series::Latest.has_ktls());
        assert_eq!(KernelChoice::All.series(), Series::ALL.to_vec());
    }
}
