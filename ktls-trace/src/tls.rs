//! TLS protocol facts both sides of the project speak: the protocol version, the record
//! cipher, and what a record adds on the wire. The tracer reads version and cipher from the
//! kernel (`tls_context.prot_info`, sock_diag's `TLS_INFO_*`), the load negotiates them with
//! rustls; both use these types, never strings.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An enum whose variants have a name (command line, JSON, reports) and a value the kernel
/// uses (`struct tls_crypto_info`, sock_diag): `ALL` in preference order, `name`, `wire`,
/// their inverses, `Display`, and serde by name.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $ty:ident { $($(#[$vdoc:meta])* $v:ident = ($name:literal, $wire:literal)),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $ty {
            $($(#[$vdoc])* $v),+
        }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$v),+];

            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$v => $name),+
                }
            }

            /// The kernel's value.
            pub fn wire(self) -> u16 {
                match self {
                    $($ty::$v => $wire),+
                }
            }

            pub fn from_wire(v: u16) -> Option<$ty> {
                Self::ALL.iter().copied().find(|x| x.wire() == v)
            }

            pub fn from_name(name: &str) -> Option<$ty> {
                Self::ALL.iter().copied().find(|x| x.name() == name)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let name = String::deserialize(d)?;
                $ty::from_name(&name)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown {}: {name}", stringify!($ty))))
            }
        }
    };
}

wire_enum! {
    /// TLS protocol version (`TLS_1_2_VERSION`, `TLS_1_3_VERSION`), newest first.
    TlsVersion {
        Tls13 = ("1.3", 0x0304),
        Tls12 = ("1.2", 0x0303),
    }
}

wire_enum! {
    /// The AEAD of the TLS records: every cipher kernel TLS knows (`TLS_CIPHER_*` in
    /// include/uapi/linux/tls.h).
    Cipher {
        Aes128Gcm = ("aes-128-gcm", 51),
        Aes256Gcm = ("aes-256-gcm", 52),
        Chacha20Poly1305 = ("chacha20-poly1305", 54),
        Aes128Ccm = ("aes-128-ccm", 53),
        Sm4Gcm = ("sm4-gcm", 55),
        Sm4Ccm = ("sm4-ccm", 56),
        Aria128Gcm = ("aria-128-gcm", 57),
        Aria256Gcm = ("aria-256-gcm", 58),
    }
}

/// `--tls`: every version.
impl clap::ValueEnum for TlsVersion {
    fn value_variants<'a>() -> &'a [Self] {
        TlsVersion::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// `--cipher`: what the workload generator can negotiate.
impl clap::ValueEnum for Cipher {
    fn value_variants<'a>() -> &'a [Self] {
        &Cipher::LOAD
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl Cipher {
    /// The ciphers the workload generator can negotiate (rustls with ring).
    pub const LOAD: [Cipher; 3] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];

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

/// The largest plaintext a record carries (`TLS_MAX_PAYLOAD_SIZE`, 2^14). Only `verify`
/// needs it, which a build without the workload generator lacks.
#[cfg(feature = "load")]
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
        assert_eq!(Cipher::value_variants(), Cipher::LOAD);
        assert_eq!(
            Cipher::from_str("aes-256-gcm", false),
            Ok(Cipher::Aes256Gcm)
        );
        assert!(Cipher::from_str("sm4-gcm", false).is_err());
        assert_eq!(TlsVersion::from_str("1.2", false), Ok(TlsVersion::Tls12));
        assert!(serde_json::from_str::<Cipher>("\"rot13\"").is_err());
    }
}
