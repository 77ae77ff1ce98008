//! Errors of the load generator. Every message is one line, names what failed and why,
//! and carries no raw errno numbers.

use std::{io, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A command-line mistake (the binary exits with code 2).
    #[error("{0}")]
    Usage(String),

    /// The ktls-* modes on a kernel that cannot do kernel TLS.
    #[error(
        "kernel TLS is not available: {reason}; the kernel was built without CONFIG_TLS or the \
         tls module is not loaded (try `modprobe tls`); use --mode userspace-tls or --mode \
         plain-sendfile instead"
    )]
    NoKernelTls { reason: String },

    /// The kernel has TLS but not the requested version/cipher combination.
    #[error("{0}")]
    KtlsCipher(String),

    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },

    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },

    #[error("cannot create the generated file: {0}")]
    Generate(String),

    #[error("TLS setup failed: {0}")]
    Tls(String),

    #[error("cannot resolve {addr}: {reason}")]
    Resolve { addr: String, reason: String },

    #[error("{0}")]
    Runtime(String),
}

impl LoadError {
    pub fn read(what: &'static str, path: &Path, err: &io::Error) -> LoadError {
        LoadError::Read {
            what,
            path: path.display().to_string(),
            reason: io_reason(err),
        }
    }

    pub fn is_usage(&self) -> bool {
        matches!(self, LoadError::Usage(_))
    }
}

/// An I/O error as words: "address already in use", not "... (os error 98)".
pub fn io_reason(err: &io::Error) -> String {
    use io::ErrorKind as K;
    let fixed = match err.kind() {
        K::AddrInUse => Some("address already in use (another server is listening there)"),
        K::AddrNotAvailable => Some("address not available on this machine"),
        K::PermissionDenied => Some("permission denied"),
        K::NotFound => Some("no such file or directory"),
        K::ConnectionRefused => Some("connection refused (is the server running?)"),
        K::ConnectionReset => Some("connection reset by peer"),
        K::ConnectionAborted => Some("connection aborted"),
        K::BrokenPipe => Some("connection closed by peer"),
        K::UnexpectedEof => Some("connection closed early"),
        K::TimedOut => Some("timed out"),
        K::IsADirectory => Some("is a directory"),
        _ => None,
    };
    match fixed {
        Some(s) => s.to_string(),
        None => strip_os_error(&err.to_string()),
    }
}

/// Removes every " (os error N)" std adds to OS errors.
pub fn strip_os_error(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" (os error ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " (os error ".len()..];
        match tail.find(')') {
            Some(j) if tail[..j].bytes().all(|b| b.is_ascii_digit()) => rest = &tail[j + 1..],
            _ => {
                out.push_str(" (os error ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// An error and its sources on one line, without errno numbers.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut src = err.source();
    while let Some(e) = src {
        let s = e.to_string();
        // Many errors repeat their source in their own message.
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        src = e.source();
    }
    strip_os_error(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_errno_in_reasons() {
        let e = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert!(io_reason(&e).starts_with("address already in use"));
        let e = io::Error::from_raw_os_error(libc::EIO);
        let r = io_reason(&e);
        assert!(!r.contains("os error"), "{r}");
        assert_eq!(strip_os_error("Foo bar (os error 5)"), "Foo bar");
        assert_eq!(strip_os_error("plain"), "plain");
        assert_eq!(strip_os_error("a (os error 1): b (os error 22)"), "a: b");
    }

    #[test]
    fn kernel_tls_message_is_one_line_with_the_way_out() {
        let m = LoadError::NoKernelTls {
            reason: "no tls module".into(),
        }
        .to_string();
        assert!(!m.contains('\n'));
        assert!(m.contains("CONFIG_TLS") && m.contains("modprobe tls"));
        assert!(m.contains("--mode userspace-tls") && m.contains("plain-sendfile"));
    }
}
