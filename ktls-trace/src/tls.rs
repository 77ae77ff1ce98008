//! TLS protocol facts both sides of the project speak: the protocol version, the record
//! cipher, and what a record adds on the wire. The tracer reads version and cipher from the
//! kernel (`tls_context.prot_info`, sock_diag's `TLS_INFO_*`), the load negotiates them with
//! rustls; both use these types, never strings.

use std::fmt;

use serde::{Deserialize, Serialize};

/// TLS protocol version.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    Serialize,
    Deserialize,
)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    pub const ALL: [TlsVersion; 2] = [TlsVersion::Tls13, TlsVersion::Tls12];

    /// "1.2" / "1.3".
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }

    /// The wire value (`TLS_1_2_VERSION` = 0x0303, `TLS_1_3_VERSION` = 0x0304).
    pub fn wire(self) -> u16 {
        match self {
            TlsVersion::Tls12 => 0x0303,
            TlsVersion::Tls13 => 0x0304,
        }
    }

    pub fn from_wire(v: u16) -> Option<TlsVersion> {
        TlsVersion::ALL.into_iter().find(|t| t.wire() == v)
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The AEAD of the TLS records: every cipher kernel TLS knows (`TLS_CIPHER_*` in
/// include/uapi/linux/tls.h). rustls, and so `ktls-trace load`, offers the first three.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    Serialize,
    Deserialize,
)]
pub enum Cipher {
    #[value(name = "aes-128-gcm")]
    #[serde(rename = "aes-128-gcm")]
    Aes128Gcm,
    #[value(name = "aes-256-gcm")]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    #[value(name = "chacha20-poly1305")]
    #[serde(rename = "chacha20-poly1305")]
    Chacha20Poly1305,
    #[value(skip)]
    #[serde(rename = "aes-128-ccm")]
    Aes128Ccm,
    #[value(skip)]
    #[serde(rename = "sm4-gcm")]
    Sm4Gcm,
    #[value(skip)]
    #[serde(rename = "sm4-ccm")]
    Sm4Ccm,
    #[value(skip)]
    #[serde(rename = "aria-128-gcm")]
    Aria128Gcm,
    #[value(skip)]
    #[serde(rename = "aria-256-gcm")]
    Aria256Gcm,
}

impl Cipher {
    pub const ALL: [Cipher; 8] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
        Cipher::Aes128Ccm,
        Cipher::Sm4Gcm,
        Cipher::Sm4Ccm,
        Cipher::Aria128Gcm,
        Cipher::Aria256Gcm,
    ];

    /// The ciphers the workload generator can negotiate (rustls with ring).
    pub const LOAD: [Cipher; 3] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];

    /// "aes-128-gcm", ...
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "aes-128-gcm",
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::Chacha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes128Ccm => "aes-128-ccm",
            Cipher::Sm4Gcm => "sm4-gcm",
            Cipher::Sm4Ccm => "sm4-ccm",
            Cipher::Aria128Gcm => "aria-128-gcm",
            Cipher::Aria256Gcm => "aria-256-gcm",
        }
    }

    /// As `ss` prints it: "AES-GCM-128", ...
    pub fn kernel_name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "AES-GCM-128",
            Cipher::Aes256Gcm => "AES-GCM-256",
            Cipher::Chacha20Poly1305 => "CHACHA20-POLY1305",
            Cipher::Aes128Ccm => "AES-CCM-128",
            Cipher::Sm4Gcm => "SM4-GCM",
            Cipher::Sm4Ccm => "SM4-CCM",
            Cipher::Aria128Gcm => "ARIA-GCM-128",
            Cipher::Aria256Gcm => "ARIA-GCM-256",
        }
    }

    /// The kernel's `TLS_CIPHER_*` value.
    pub fn wire(self) -> u16 {
        match self {
            Cipher::Aes128Gcm => 51,
            Cipher::Aes256Gcm => 52,
            Cipher::Aes128Ccm => 53,
            Cipher::Chacha20Poly1305 => 54,
            Cipher::Sm4Gcm => 55,
            Cipher::Sm4Ccm => 56,
            Cipher::Aria128Gcm => 57,
            Cipher::Aria256Gcm => 58,
        }
    }

    pub fn from_wire(v: u16) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.wire() == v)
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a connection's records are protected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TlsParams {
    pub version: TlsVersion,
    pub cipher: Cipher,
}

impl TlsParams {
    /// From the kernel's values; None for a version or cipher this build does not know.
    pub fn from_wire(version: u16, cipher: u16) -> Option<TlsParams> {
        Some(TlsParams {
            version: TlsVersion::from_wire(version)?,
            cipher: Cipher::from_wire(cipher)?,
        })
    }

    /// Bytes one record adds on the wire: the 5-byte header and the 16-byte tag, plus the
    /// explicit nonce of TLS 1.2's GCM/CCM (8) or TLS 1.3's inner content type (1).
    /// None for combinations TLS does not define (SM4 exists only in TLS 1.3).
    pub fn record_overhead(self) -> Option<u64> {
        const HEADER: u64 = 5;
        const TAG: u64 = 16;
        match (self.version, self.cipher) {
            (TlsVersion::Tls13, _) => Some(HEADER + 1 + TAG),
            (TlsVersion::Tls12, Cipher::Chacha20Poly1305) => Some(HEADER + TAG),
            (TlsVersion::Tls12, Cipher::Sm4Gcm | Cipher::Sm4Ccm) => None,
            (TlsVersion::Tls12, _) => Some(HEADER + 8 + TAG),
        }
    }
}

impl fmt::Display for TlsParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS {} {}", self.version, self.cipher.kernel_name())
    }
}

/// The largest plaintext a record carries (`TLS_MAX_PAYLOAD_SIZE`, 2^14).
pub const MAX_RECORD_PAYLOAD: u64 = 1 << 14;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: TlsVersion, c: Cipher) -> TlsParams {
        TlsParams {
            version: v,
            cipher: c,
        }
    }

    #[test]
    fn record_overheads() {
        // kernel-paths.md: 22 for TLS 1.3 AES-GCM, 29 for TLS 1.2 AES-GCM.
        assert_eq!(
            p(TlsVersion::Tls13, Cipher::Aes128Gcm).record_overhead(),
            Some(22)
        );
        assert_eq!(
            p(TlsVersion::Tls13, Cipher::Chacha20Poly1305).record_overhead(),
            Some(22)
        );
        assert_eq!(
            p(TlsVersion::Tls12, Cipher::Aes256Gcm).record_overhead(),
            Some(29)
        );
        assert_eq!(
            p(TlsVersion::Tls12, Cipher::Chacha20Poly1305).record_overhead(),
            Some(21)
        );
        assert_eq!(p(TlsVersion::Tls12, Cipher::Sm4Gcm).record_overhead(), None);
    }

    #[test]
    fn wire_values_and_names() {
        assert_eq!(
            TlsParams::from_wire(0x0304, 51),
            Some(p(TlsVersion::Tls13, Cipher::Aes128Gcm))
        );
        assert_eq!(TlsParams::from_wire(0x0302, 51), None);
        assert_eq!(TlsParams::from_wire(0x0303, 99), None);
        assert_eq!(Cipher::from_wire(54), Some(Cipher::Chacha20Poly1305));
        assert_eq!(
            p(TlsVersion::Tls12, Cipher::Aes256Gcm).to_string(),
            "TLS 1.2 AES-GCM-256"
        );
        assert_eq!(
            serde_json::to_string(&Cipher::Chacha20Poly1305).unwrap(),
            "\"chacha20-poly1305\""
        );
        assert_eq!(
            serde_json::from_str::<TlsVersion>("\"1.3\"").unwrap(),
            TlsVersion::Tls13
        );
        // The load's --cipher offers what rustls can negotiate, nothing else.
        use clap::ValueEnum as _;
        let offered: Vec<Cipher> = Cipher::value_variants()
            .iter()
            .filter(|c| c.to_possible_value().is_some())
            .copied()
            .collect();
        assert_eq!(offered, Cipher::LOAD);
    }
}
