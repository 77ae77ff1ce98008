//! Facts about the running kernel, read from /proc and /sys without changing anything:
//! version, BTF, kprobe support, tracefs, kernel TLS, which probe points exist, privileges.
//! `doctor` prints them; the attach plan ([`crate::plan`]) is chosen from them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use ktls_trace_common::probes::{Hook, PROBES};

/// The kernel functions ktls-trace may probe (looked up in /proc/kallsyms), from the
/// probe table.
pub fn probed_functions() -> Vec<&'static str> {
    PROBES
        .iter()
        .filter_map(|s| match s.hook {
            Hook::Kfunc(f) => Some(f),
            _ => None,
        })
        .collect()
}

/// Where kernel TLS stands on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsState {
    /// The `tls` module is loaded.
    Loaded,
    /// Built into the kernel.
    Builtin,
    /// A module exists but is not loaded (`modprobe tls`).
    Loadable(PathBuf),
    /// Not available; the string says why.
    Missing(String),
}

impl TlsState {
    /// The running kernel's, alone: a few stat calls, where [`KernelFacts::probe`] also
    /// reads /proc/kallsyms (seconds in an emulated guest). For `top --load`'s default mode.
    #[cfg(feature = "load")]
    pub fn current() -> TlsState {
        tls_state(&uname().0)
    }

    pub fn is_active(&self) -> bool {
        matches!(self, TlsState::Loaded | TlsState::Builtin)
    }
    pub fn is_available(&self) -> bool {
        !matches!(self, TlsState::Missing(_))
    }

    /// The tls module has finished initialising (or TLS is built in). `/sys/module/tls`
    /// appears while the module is still coming up (MODULE_STATE_COMING), before its
    /// symbols are all final in kallsyms: attach only once `initstate` says "live".
    pub fn module_live() -> bool {
        if !Path::new("/sys/module/tls").exists() {
            return false;
        }
        match fs::read_to_string("/sys/module/tls/initstate") {
            Ok(s) => s.trim() == "live",
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }
    pub fn describe(&self) -> String {
        match self {
            TlsState::Loaded => "loaded (module tls)".into(),
            TlsState::Builtin => "built into the kernel".into(),
            TlsState::Loadable(p) => {
                format!(
                    "loadable but not loaded ({}); run `modprobe tls`",
                    p.display()
                )
            }
            TlsState::Missing(why) => format!("not available: {why}"),
        }
    }
}

/// Effective privileges of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    pub euid: u32,
    pub cap_sys_admin: bool,
    pub cap_perfmon: bool,
    pub cap_bpf: bool,
    /// Needed for sock_diag's kernel TLS details of each socket.
    pub cap_net_admin: bool,
    /// `kernel.perf_event_paranoid` (None: unreadable). Above 2 (Debian's default 3,
    /// Ubuntu's 4) the distributions' kernels carry a patch that leaves perf_event_open,
    /// which attaches kprobes and tracepoints, to CAP_SYS_ADMIN: CAP_PERFMON is refused.
    pub perf_event_paranoid: Option<i32>,
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

impl Privileges {
    /// Parses the `CapEff:` line of /proc/self/status.
    pub fn from_status(status: &str, euid: u32, perf_event_paranoid: Option<i32>) -> Privileges {
        let capeff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let bit = |n: u32| capeff & (1u64 << n) != 0;
        Privileges {
            euid,
            cap_sys_admin: bit(CAP_SYS_ADMIN),
            cap_perfmon: bit(CAP_PERFMON),
            cap_bpf: bit(CAP_BPF),
            cap_net_admin: bit(CAP_NET_ADMIN),
            perf_event_paranoid,
        }
    }

    pub fn current() -> Privileges {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let paranoid = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Self::from_status(&status, euid, paranoid)
    }

    /// Can this process load and attach tracing programs?
    pub fn can_trace(&self) -> bool {
        self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon && !self.paranoid_blocks())
    }

    /// CAP_PERFMON is not enough here: perf_event_paranoid above 2 (see the field).
    fn paranoid_blocks(&self) -> bool {
        !self.cap_sys_admin && self.perf_event_paranoid.is_some_and(|p| p > 2)
    }

    /// Why CAP_BPF + CAP_PERFMON do not suffice on this machine, with what to do.
    pub fn paranoid_hint(&self) -> Option<String> {
        self.paranoid_blocks().then(|| {
            format!(
                "kernel.perf_event_paranoid is {}: at that level Debian's and Ubuntu's kernels let only CAP_SYS_ADMIN attach probes (perf_event_open); set it to 2 (sysctl kernel.perf_event_paranoid=2) or run as root",
                self.perf_event_paranoid.unwrap_or(3)
            )
        })
    }

    pub fn describe(&self) -> String {
        let mut caps = Vec::new();
        if self.cap_sys_admin {
            caps.push("CAP_SYS_ADMIN");
        }
        if self.cap_bpf {
            caps.push("CAP_BPF");
        }
        if self.cap_perfmon {
            caps.push("CAP_PERFMON");
        }
        let who = if self.euid == 0 { "root" } else { "not root" };
        let base = if caps.is_empty() {
            format!("{who}, no tracing capabilities")
        } else {
            format!("{who} ({})", caps.join(", "))
        };
        match self.paranoid_hint() {
            Some(h) if self.cap_bpf && self.cap_perfmon => format!("{base}; but {h}"),
            _ => base,
        }
    }
}

/// The one-line message for a process that may not trace.
pub const NEED_PRIVILEGES: &str = "ktls-trace needs root, or the CAP_BPF and CAP_PERFMON capabilities, to load eBPF programs (try: sudo ktls-trace ...)";

/// Everything ktls-trace needs to know about the kernel before it loads anything.
#[derive(Debug, Clone)]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    /// Major and minor version parsed from the release.
    pub version: Option<(u32, u32)>,
    pub machine: String,
    /// /sys/kernel/btf/vmlinux exists.
    pub btf: bool,
    /// Kprobes are usable; `Err` says why not.
    pub kprobes: Result<(), String>,
    /// The tracefs mount (events live under it), if mounted.
    pub tracefs: Option<PathBuf>,
    pub tls: TlsState,
    /// Probed functions present in /proc/kallsyms.
    pub symbols: BTreeSet<String>,
    /// /proc/net/tls_stat counters, when the kernel has them.
    pub tls_stat: Option<BTreeMap<String, u64>>,
    pub privileges: Privileges,
}

impl KernelFacts {
    /// Reads the facts of the running kernel.
    pub fn probe() -> KernelFacts {
        let started = std::time::Instant::now();
        let (release, machine) = uname();
        let version = parse_version(&release);
        let tls = tls_state(&release);
        let facts = KernelFacts {
            version,
            machine,
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            kprobes: kprobe_support(),
            tracefs: find_tracefs(),
            symbols: kallsyms_present(&probed_functions()),
            tls_stat: read_tls_stat(),
            privileges: Privileges::current(),
            tls,
            release,
        };
        log::debug!("startup: kernel facts read in {:?}", started.elapsed());
        facts
    }

    /// Re-reads the parts that change when the tls module is loaded later.
    pub fn refresh_tls(&mut self) {
        self.tls = tls_state(&self.release);
        self.symbols = kallsyms_present(&probed_functions());
        self.tls_stat = read_tls_stat();
    }

    pub fn has_symbol(&self, name: &str) -> bool {
        self.symbols.contains(name)
    }

    /// Mounts tracefs when no mount is found (a fresh boot of many distributions mounts
    /// it only on first use), so that the tracepoints the kernel has can be seen. The
    /// tracer does this before it attaches tracepoints, and `doctor` before it reports
    /// them: both must see the same kernel.
    pub fn mount_tracefs(&mut self) -> Result<(), String> {
        if self.tracefs.is_none() {
            self.tracefs = Some(ensure_tracefs()?);
        }
        Ok(())
    }
}

fn uname() -> (String, String) {
    // SAFETY: utsname is plain data; uname fills it and cannot fail with a valid pointer.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("unknown".into(), "unknown".into());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.release), field(&u.machine))
}

/// "6.1.0-56-cloud-amd64" -> (6, 1); "6.12.117+deb12-cloud-amd64" -> (6, 12).
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn kprobe_support() -> Result<(), String> {
    // The kprobe PMU is how kprobes are attached (perf_event_open with this type).
    if Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        Ok(())
    } else {
        Err(
            "kernel built without CONFIG_KPROBES (no kprobe PMU in /sys/bus/event_source/devices)"
                .into(),
        )
    }
}

/// Finds the mounted tracefs (where tracepoint ids live).
pub fn find_tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Mounts tracefs at /sys/kernel/tracing when it is not mounted anywhere (as `perf` and
/// `bpftrace` need it too, this is the standard place).
fn ensure_tracefs() -> Result<PathBuf, String> {
    if let Some(p) = find_tracefs() {
        return Ok(p);
    }
    // Mounted but closed to this process (Debian mounts it 0700, root's): mounting again
    // would not help, the missing capability would.
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if fs::read_dir(dir).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied) {
            return Err(format!(
                "tracefs at {dir} is not readable by this process (root's only): run as root or give it CAP_DAC_READ_SEARCH"
            ));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(PathBuf::from("/sys/kernel/tracing"))
    } else {
        Err("tracefs is not mounted and mounting it at /sys/kernel/tracing failed".into())
    }
}

/// Which of `names` are functions in /proc/kallsyms (module symbols included).
pub fn kallsyms_present(names: &[&str]) -> BTreeSet<String> {
    let text = fs::read("/proc/kallsyms").unwrap_or_default();
    parse_kallsyms(&text, names)
}

/// "ffffffff81234560 T do_sendfile" or "... t tls_sw_sendmsg\t[tls]": the text-symbol
/// names among `names`. Bytes, not `str` lines split on whitespace: some 200,000 lines on a
/// 7.x kernel, read by every command at start, took 1.6 s in an emulated guest that way
/// (and the file is ASCII, so not validating it as UTF-8 loses nothing).
pub fn parse_kallsyms(text: &[u8], names: &[&str]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.split(|&c| c == b'\n') {
        let Some(space) = line.iter().position(|&c| c == b' ') else {
            continue;
        };
        let name = match &line[space + 1..] {
            [b'T' | b't', b' ', name @ ..] => name,
            _ => continue,
        };
        let name = match name.iter().position(|&c| c == b'\t') {
            Some(tab) => &name[..tab],
            None => name,
        };
        if let Some(n) = names.iter().find(|n| n.as_bytes() == name) {
            found.insert(n.to_string());
        }
    }
    found
}

fn tls_state(release: &str) -> TlsState {
    if Path::new("/sys/module/tls/initstate").exists() {
        return TlsState::Loaded;
    }
    if Path::new("/sys/module/tls").exists() || Path::new("/proc/net/tls_stat").exists() {
        return TlsState::Builtin;
    }
    let moddir = PathBuf::from("/lib/modules").join(release);
    if let Ok(builtin) = fs::read_to_string(moddir.join("modules.builtin"))
        && builtin.lines().any(|l| l.ends_with("net/tls/tls.ko"))
    {
        return TlsState::Builtin;
    }
    for ext in ["ko", "ko.xz", "ko.zst", "ko.gz"] {
        let p = moddir.join(format!("kernel/net/tls/tls.{ext}"));
        if p.exists() {
            return TlsState::Loadable(p);
        }
    }
    match kernel_config_value(release, "CONFIG_TLS") {
        Some(v) if v == "n" => TlsState::Missing("kernel built without CONFIG_TLS".into()),
        Some(v) => TlsState::Missing(format!(
            "CONFIG_TLS={v} but no tls module under {}",
            moddir.display()
        )),
        None => TlsState::Missing(format!(
            "no tls module under {} and not built in (kernel built without CONFIG_TLS?)",
            moddir.display()
        )),
    }
}

/// Looks `key` up in /boot/config-<release>; "n" for "# CONFIG_X is not set".
fn kernel_config_value(release: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/boot/config-{release}")).ok()?;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
        if line == format!("# {key} is not set") {
            return Some("n".into());
        }
    }
    None
}

/// /proc/net/tls_stat now, parsed; None without kernel TLS (the file exists once the
/// tls module is loaded).
pub fn read_tls_stat() -> Option<BTreeMap<String, u64>> {
    let text = fs::read_to_string("/proc/net/tls_stat").ok()?;
    Some(parse_tls_stat(&text))
}

/// Parses /proc/net/tls_stat ("TlsCurrTxSw    1" per line).
pub fn parse_tls_stat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Offsets of the fields of a tracepoint record, from its `format` file.
pub fn tracepoint_fields(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Option<BTreeMap<String, (u32, u32)>> {
    let text = fs::read_to_string(
        tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format"),
    )
    .ok()?;
    Some(parse_tracepoint_format(&text))
}

/// Parses lines like `field:void * sk;\toffset:8;\tsize:8;\tsigned:0;` into
/// name -> (offset, size).
pub fn parse_tracepoint_format(text: &str) -> BTreeMap<String, (u32, u32)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.parse().ok();
            } else if let Some(s) = part.strip_prefix("size:") {
                size = s.parse().ok();
            }
        }
        if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
            let decl = decl.split('[').next().unwrap_or(decl);
            if let Some(name) = decl
                .split(|c: char| c.is_whitespace() || c == '*')
                .next_back()
            {
                out.insert(name.to_string(), (offset, size));
            }
        }
    }
    out
}

/// Does the tracepoint `category:name` exist?
pub fn tracepoint_exists(tracefs: Option<&Path>, category: &str, name: &str) -> bool {
    tracefs.is_some_and(|t| t.join("events").join(category).join(name).is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn privileges_from_capeff() {
        let full = Privileges::from_status("Name:\tx\nCapEff:\t000001ffffffffff\n", 0, Some(3));
        assert!(full.can_trace() && full.cap_bpf && full.cap_perfmon);
        let none = Privileges::from_status("CapEff:\t0000000000000000\n", 1000, Some(2));
        assert!(!none.can_trace());
        assert_eq!(none.describe(), "not root, no tracing capabilities");
        // CAP_BPF + CAP_PERFMON without CAP_SYS_ADMIN is enough.
        let caps = format!("CapEff:\t{:016x}\n", (1u64 << 38) | (1 << 39));
        let bpf = Privileges::from_status(&caps, 1000, Some(2));
        assert!(bpf.can_trace() && !bpf.cap_sys_admin);
        assert_eq!(bpf.paranoid_hint(), None);
        // ...unless perf_event_paranoid is above 2 (Debian's default 3): then only
        // CAP_SYS_ADMIN may attach, and the description says what to do.
        let debian = Privileges::from_status(&caps, 1000, Some(3));
        assert!(!debian.can_trace());
        assert!(
            debian.describe().contains("perf_event_paranoid is 3"),
            "{}",
            debian.describe()
        );
        assert!(Privileges::from_status(&caps, 1000, None).can_trace());
        // Only CAP_BPF is not.
        let half = Privileges::from_status(&format!("CapEff:\t{:016x}\n", 1u64 << 39), 1000, None);
        assert!(!half.can_trace());
    }

    #[test]
    fn kallsyms_lines() {
        let text = "ffffffff81000000 T do_sendfile\n\
                    ffffffffc0a01000 t tls_sw_sendmsg\t[tls]\n\
                    ffffffff81000010 d tcp_sendmsg\n\
                    ffffffff81000020 T tcp_sendmsg_locked.cold\n";
        let found = parse_kallsyms(text.as_bytes(), &probed_functions());
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec!["do_sendfile".to_string(), "tls_sw_sendmsg".to_string()]
        );
    }

    #[test]
    fn tracepoint_format() {
        let text = "name: sock_send_length\nID: 1234\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;\n\
            \tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;\n\
            \tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;\n";
        let f = parse_tracepoint_format(text);
        assert_eq!(f["sk"], (8, 8));
        assert_eq!(f["protocol"], (18, 2));
        assert_eq!(f["ret"], (20, 4));
        assert_eq!(f["comm"], (24, 16));
        assert_eq!(f["common_type"], (0, 2));
    }

    #[test]
    fn tls_stat() {
        let s = parse_tls_stat("TlsCurrTxSw                     \t2\nTlsTxSw 7\nbogus\n");
        assert_eq!(s["TlsCurrTxSw"], 2);
        assert_eq!(s["TlsTxSw"], 7);
        assert_eq!(s.len(), 2);
    }
}
