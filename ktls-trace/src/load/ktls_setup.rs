//! Kernel TLS: probe once at start what the running kernel supports (a failed setsockopt
//! consumes the connection it was tried on, so connections must not be the probe), and
//! hand a finished rustls handshake to the kernel.

use std::{
    io,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd,
};

use super::{
    args::{Cipher, TlsVersion},
    error::{LoadError, io_reason},
    tls::{TlsChoice, allowed_pairs},
};

/// What the running kernel's TLS can do.
#[derive(Debug)]
pub struct KernelTls {
    ciphers: ktls::CompatibleCiphers,
}

impl KernelTls {
    /// Checks that kernel TLS exists at all (one clear error if not), then which
    /// version/cipher pairs accept a key.
    pub async fn probe() -> Result<KernelTls, LoadError> {
        probe_ulp()?;
        let ciphers = ktls::CompatibleCiphers::new()
            .await
            .map_err(|e| LoadError::NoKernelTls {
                reason: format!("probing its ciphers failed: {}", io_reason(&e)),
            })?;
        log::info!("kernel TLS ciphers: {ciphers:?}");
        Ok(KernelTls { ciphers })
    }

    pub fn supports(&self, version: TlsVersion, cipher: Cipher) -> bool {
        let v = match version {
            TlsVersion::Tls12 => &self.ciphers.tls12,
            TlsVersion::Tls13 => &self.ciphers.tls13,
        };
        match cipher {
            Cipher::Aes128Gcm => v.aes_gcm_128,
            Cipher::Aes256Gcm => v.aes_gcm_256,
            Cipher::Chacha20Poly1305 => v.chacha20_poly1305,
            // rustls negotiates no other cipher, so the load never asks for one.
            _ => false,
        }
    }

    /// The pairs of `choice` the kernel supports; an error naming the pair if none.
    pub fn restrict(&self, choice: &TlsChoice) -> Result<Vec<(TlsVersion, Cipher)>, LoadError> {
        let wanted = allowed_pairs(choice);
        let ok: Vec<_> = wanted
            .iter()
            .copied()
            .filter(|(v, c)| self.supports(*v, *c))
            .collect();
        for (v, c) in wanted.iter().filter(|p| !ok.contains(p)) {
            log::info!("kernel TLS cannot do {c} with TLS {v} here; not offered");
        }
        if !ok.is_empty() {
            return Ok(ok);
        }
        let what = match (choice.cipher, choice.version) {
            (Some(c), Some(v)) => format!("{c} with TLS {v}"),
            (Some(c), None) => format!("{c}"),
            (None, Some(v)) => format!("any cipher with TLS {v}"),
            (None, None) => "any of aes-128-gcm, aes-256-gcm, chacha20-poly1305".to_string(),
        };
        let hint = if choice.cipher == Some(Cipher::Chacha20Poly1305) {
            " (ChaCha20-Poly1305 needs the chacha20poly1305 crypto module: modprobe \
             chacha20poly1305)"
        } else {
            ""
        };
        Err(LoadError::KtlsCipher(format!(
            "kernel TLS on this kernel cannot use {what}{hint}; pick another --cipher/--tls, \
             or --mode userspace-tls"
        )))
    }
}

/// Enables the "tls" upper-layer protocol on a throw-away loopback connection.
fn probe_ulp() -> Result<(), LoadError> {
    let fail = |what: &str, e: io::Error| LoadError::NoKernelTls {
        reason: format!("{what}: {}", io_reason(&e)),
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| fail("cannot open a loopback socket to probe it", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail("cannot open a loopback socket to probe it", e))?;
    let client = TcpStream::connect(addr)
        .map_err(|e| fail("cannot connect over loopback to probe it", e))?;
    let _server = listener
        .accept()
        .map_err(|e| fail("cannot connect over loopback to probe it", e))?;
    let name = b"tls";
    // SAFETY: `client` is an open, connected TCP socket for the whole call; the option
    // value points to `name.len()` readable bytes.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    let reason = match err.raw_os_error() {
        Some(libc::ENOENT) => "the kernel has no \"tls\" TCP upper-layer protocol".to_string(),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "enabling it needs root (CAP_NET_ADMIN) to load the tls module".to_string()
        }
        _ => format!("setsockopt(TCP_ULP, \"tls\") failed: {}", io_reason(&err)),
    };
    Err(LoadError::NoKernelTls { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a kernel without kernel TLS the probe fails with the one-line message; with it,
    /// every modern kernel has AES-GCM-128 for TLS 1.3.
    #[tokio::test]
    async fn probe_agrees_with_the_kernel() {
        match KernelTls::probe().await {
            Ok(k) => {
                assert!(crate::kernel::TlsState::module_live());
                assert!(k.supports(TlsVersion::Tls13, Cipher::Aes128Gcm));
                let any = k.restrict(&TlsChoice::default()).unwrap();
                assert!(!any.is_empty());
            }
            Err(e) => {
                let m = e.to_string();
                assert!(m.starts_with("kernel TLS is not available"), "{m}");
                assert!(!m.contains("os error"), "{m}");
            }
        }
    }
}
