//! The `ktls-trace load` command line, and the names shared with the library API
//! ([`Mode`]; version and cipher are `crate::tls`'s).

use std::{fmt, net::SocketAddr, path::PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::classify::Path;
pub use crate::tls::{Cipher, TlsVersion};

/// Default size of the generated file when neither `--file` nor `--file-size` is given.
pub const DEFAULT_FILE_SIZE: u64 = 4 << 20;
/// Default listen address of `--server-only`.
pub const DEFAULT_SERVER_LISTEN: &str = "127.0.0.1:8443";
/// Default run time of the client when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;

/// How the server sends the file: the same workload through four transmit paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Kernel TLS; the body goes out with sendfile(2): page cache -> kernel encryption -> TCP.
    KtlsSendfile,
    /// Kernel TLS; the body is written from a user-space buffer (write(2) on the kTLS socket).
    KtlsWrite,
    /// rustls encrypts in user space; ciphertext is written to a plain TCP socket.
    UserspaceTls,
    /// No TLS at all: plain HTTP, the body goes out with sendfile(2).
    PlainSendfile,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::KtlsSendfile => "ktls-sendfile",
            Mode::KtlsWrite => "ktls-write",
            Mode::UserspaceTls => "userspace-tls",
            Mode::PlainSendfile => "plain-sendfile",
        }
    }

    /// Does the server hand the connection to kernel TLS?
    pub fn kernel_tls(self) -> bool {
        matches!(self, Mode::KtlsSendfile | Mode::KtlsWrite)
    }

    /// Is the connection encrypted at all?
    pub fn tls(self) -> bool {
        self != Mode::PlainSendfile
    }

    /// Is the body sent with sendfile(2) (rather than from a user-space buffer)?
    pub fn sendfile(self) -> bool {
        matches!(self, Mode::KtlsSendfile | Mode::PlainSendfile)
    }
}

/// The path each mode's payload takes (what `verify` and `top` should find).
impl From<Mode> for Path {
    fn from(m: Mode) -> Path {
        match m {
            Mode::KtlsSendfile => Path::KtlsSendfile,
            Mode::KtlsWrite => Path::KtlsWrite,
            Mode::UserspaceTls => Path::UserspaceTls,
            Mode::PlainSendfile => Path::PlainSendfile,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Serve a file over HTTPS and/or fetch it, through one of four transmit paths
/// (see --mode), and report bytes, throughput, errors and CPU time per GiB.
/// By default runs a server and its client in this one process on 127.0.0.1.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = LOAD_AFTER_HELP)]
pub struct LoadArgs {
    /// How the server sends the file body.
    #[arg(long, value_enum, default_value_t = Mode::KtlsSendfile)]
    pub mode: Mode,

    /// Run only the server (until --requests are served, --duration ends, or SIGINT/SIGTERM).
    /// Prints a JSON ready line on stdout once listening (see docs/load.md).
    #[arg(long)]
    pub server_only: bool,

    /// Run only the client, against --connect (any HTTPS server: curl-like GET requests).
    #[arg(
        long,
        requires = "connect",
        conflicts_with_all = ["server_only", "listen", "cert", "key"]
    )]
    pub client_only: bool,

    /// Server address [default: 127.0.0.1:8443 with --server-only, a free port on 127.0.0.1
    /// otherwise]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Server the client loads, HOST:PORT (with --client-only).
    #[arg(long, value_name = "HOST:PORT", requires = "client_only")]
    pub connect: Option<String>,

    /// Print the modes, one per line, and exit (for scripts).
    #[arg(long, exclusive = true)]
    pub list_modes: bool,

    /// Path the client requests (the server answers every GET path with the same file).
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub path: String,

    /// File to serve; for --client-only, a local copy of the file to check the content
    /// against.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Size of the generated file (suffixes K, M, G: powers of 1024) [default: 4M].
    /// The file has a fixed pattern, lives in a temporary directory and is removed at
    /// exit. With --client-only: check the content against that pattern.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "file")]
    pub file_size: Option<u64>,

    /// Server certificate chain (PEM) [default: a self-signed certificate for localhost].
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Private key of --cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Client: verify the server's certificate against this CA/certificate (PEM).
    /// Without it the client accepts any certificate (self-signed ones included): this is
    /// a load generator, not a secure client.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,

    /// Client: TLS server name (SNI) and Host header [default: the host of --connect, or
    /// localhost].
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,

    /// Parallel client connections, each sending its GET requests one after the other
    /// (keep-alive).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub connections: u32,

    /// Client: requests on one connection before it asks the server to close
    /// (`Connection: close`) and opens a new one [default: keep each connection open].
    /// 1 makes every request a fresh connection and handshake.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests_per_connection: Option<u64>,

    /// Run for this many seconds [default: 10 for the client; the server alone runs until
    /// stopped].
    #[arg(long, value_name = "SECS", conflicts_with = "requests")]
    pub duration: Option<f64>,

    /// Total number of requests over all connections (not per connection), then stop.
    /// The server alone stops once it has answered this many.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,

    /// TLS cipher [default: any the client and (for kernel TLS) the kernel support].
    #[arg(long, value_enum)]
    pub cipher: Option<Cipher>,

    /// TLS version [default: 1.3 if both sides support it, else 1.2].
    #[arg(long, value_enum, value_name = "VERSION")]
    pub tls: Option<TlsVersion>,

    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// Server: drop a connection whose client reads nothing of its response for this many
    /// seconds (a stalled or malicious client must not hold a request for good).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub send_timeout: u64,

    /// Server: connections open at once; more are closed as soon as they are accepted
    /// (counted as stray).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,

    /// Test-only fault injection: the server flips the body byte at this offset
    /// (ktls-write and userspace-tls only), so the client's check must fail.
    #[arg(long, value_name = "OFFSET", hide = true)]
    pub corrupt_byte: Option<u64>,

    /// Test-only fault injection: the server closes each connection once it has read the
    /// request, without answering, so every request of the client fails.
    #[arg(long, hide = true)]
    pub hang_up: bool,
}

const LOAD_AFTER_HELP: &str = "\
Modes:
  ktls-sendfile   kernel TLS + sendfile(2): no user-space copy (needs the tls module)
  ktls-write      kernel TLS, body written from a user buffer (needs the tls module)
  userspace-tls   rustls encrypts in user space, plain socket writes
  plain-sendfile  no TLS: plain HTTP, body with sendfile(2)

Every GET path returns the served file (Content-Length, X-Content-SHA256), so curl -k,
openssl s_client or a browser can fetch from the server, and --client-only can load any
HTTPS server. The client reads every byte and checks it: against --file, the generated
pattern (--file-size), or the server's X-Content-SHA256 header, else by length only.

Output: progress on stderr when stderr is a terminal; the report on stdout (--json: one
JSON object). --server-only first prints one JSON ready line on stdout:
  {\"event\":\"ready\",\"listen\":\"127.0.0.1:8443\",\"pid\":...}

Exit status: 0 ok, 1 failure (including any request error or content mismatch, and a
kernel without kernel TLS for the ktls-* modes), 2 usage error.";

/// Parses "4194304", "4M", "512K", "1G", "4MiB", "64kb" (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size (examples: 4194304, 512K, 4M, 1G)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is too large"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "'{s}': unknown size unit '{unit}' (use K, M or G, powers of 1024)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .filter(|&v| v <= 1 << 40)
        .ok_or_else(|| format!("'{s}' is too large (at most 1T)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("3MiB"), Ok(3 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("M").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("2000G").is_err());
    }

    #[test]
    fn names_round_trip() {
        for m in [
            Mode::KtlsSendfile,
            Mode::KtlsWrite,
            Mode::UserspaceTls,
            Mode::PlainSendfile,
        ] {
            let v = serde_json::to_value(m).unwrap();
            assert_eq!(v, m.name());
            assert_eq!(Mode::from_str(m.name(), false).unwrap(), m);
        }
        for c in Cipher::LOAD {
            assert_eq!(serde_json::to_value(c).unwrap(), c.name());
            assert_eq!(Cipher::from_str(c.name(), false).unwrap(), c);
        }
        for &v in TlsVersion::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
            assert_eq!(TlsVersion::from_str(v.name(), false).unwrap(), v);
        }
    }
}
