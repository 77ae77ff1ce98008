//! rustls configurations for both sides (ring provider), restricted to the requested
//! version/cipher, and the names of what a connection negotiated.

use std::{fs, path::Path, sync::Arc};

use rustls::{
    CipherSuite, DigitallySignedStruct, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use serde::{Deserialize, Serialize};

use super::{
    args::{Cipher, TlsVersion},
    error::LoadError,
};

/// What the user asked for: `None` means "any".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsChoice {
    pub version: Option<TlsVersion>,
    pub cipher: Option<Cipher>,
}

impl TlsChoice {
    pub fn versions(&self) -> Vec<TlsVersion> {
        match self.version {
            Some(v) => vec![v],
            None => TlsVersion::ALL.to_vec(),
        }
    }

    pub fn ciphers(&self) -> Vec<Cipher> {
        match self.cipher {
            Some(c) => vec![c],
            None => Cipher::LOAD.to_vec(),
        }
    }

    pub fn is_any(&self) -> bool {
        self.version.is_none() && self.cipher.is_none()
    }
}

/// Version and cipher of a rustls suite (None for a suite kernel TLS cannot carry).
pub fn classify(suite: SupportedCipherSuite) -> Option<(TlsVersion, Cipher)> {
    use CipherSuite as S;
    Some(match suite.suite() {
        S::TLS13_AES_128_GCM_SHA256 => (TlsVersion::Tls13, Cipher::Aes128Gcm),
        S::TLS13_AES_256_GCM_SHA384 => (TlsVersion::Tls13, Cipher::Aes256Gcm),
        S::TLS13_CHACHA20_POLY1305_SHA256 => (TlsVersion::Tls13, Cipher::Chacha20Poly1305),
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => {
            (TlsVersion::Tls12, Cipher::Aes128Gcm)
        }
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => {
            (TlsVersion::Tls12, Cipher::Aes256Gcm)
        }
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
            (TlsVersion::Tls12, Cipher::Chacha20Poly1305)
        }
        _ => return None,
    })
}

/// What one connection negotiated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Negotiated {
    pub tls_version: TlsVersion,
    pub cipher: Cipher,
    /// The IANA suite name, e.g. TLS13_AES_128_GCM_SHA256.
    pub cipher_suite: String,
}

impl Negotiated {
    pub fn of(
        suite: Option<SupportedCipherSuite>,
        version: Option<rustls::ProtocolVersion>,
    ) -> Option<Negotiated> {
        let suite = suite?;
        let (v, c) = classify(suite)?;
        let tls_version = match version {
            Some(rustls::ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
            Some(rustls::ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
            _ => v,
        };
        Some(Negotiated {
            tls_version,
            cipher: c,
            cipher_suite: format!("{:?}", suite.suite()),
        })
    }
}

/// The ring provider with only the suites in `allowed` (version, cipher) pairs.
fn provider(allowed: &[(TlsVersion, Cipher)]) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .retain(|s| classify(*s).is_some_and(|vc| allowed.contains(&vc)));
    p
}

fn protocol_versions(versions: &[TlsVersion]) -> Vec<&'static SupportedProtocolVersion> {
    versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect()
}

/// The (version, cipher) pairs the choice allows.
pub fn allowed_pairs(choice: &TlsChoice) -> Vec<(TlsVersion, Cipher)> {
    let mut out = Vec::new();
    for v in choice.versions() {
        for c in choice.ciphers() {
            out.push((v, c));
        }
    }
    out
}

/// A certificate chain and its key: from PEM files, or a fresh self-signed one for
/// localhost, 127.0.0.1 and ::1.
pub struct CertAndKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl CertAndKey {
    pub fn self_signed() -> Result<CertAndKey, LoadError> {
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| LoadError::Tls(format!("generating a self-signed certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| LoadError::Tls(format!("encoding the generated key: {e}")))?;
        Ok(CertAndKey {
            chain: vec![ck.cert.der().clone()],
            key,
        })
    }

    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<CertAndKey, LoadError> {
        let cert_pem = fs::read(cert).map_err(|e| LoadError::read("--cert", cert, &e))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LoadError::Read {
                what: "--cert",
                path: cert.display().to_string(),
                reason: format!("not a PEM certificate file ({e})"),
            })?;
        if chain.is_empty() {
            return Err(LoadError::Read {
                what: "--cert",
                path: cert.display().to_string(),
                reason: "no CERTIFICATE section in it".into(),
            });
        }
        let key_pem = fs::read(key).map_err(|e| LoadError::read("--key", key, &e))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| LoadError::Read {
            what: "--key",
            path: key.display().to_string(),
            reason: match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no private key in it".into(),
                e => format!("not a PEM private key ({e})"),
            },
        })?;
        Ok(CertAndKey { chain, key })
    }
}

/// The server side: `allowed` has already been cut down to what the kernel can do (for
/// kernel TLS), `secret_extraction` lets ktls take the keys after the handshake.
pub fn server_config(
    allowed: &[(TlsVersion, Cipher)],
    cert: CertAndKey,
    secret_extraction: bool,
) -> Result<Arc<rustls::ServerConfig>, LoadError> {
    let versions: Vec<TlsVersion> = TlsVersion::ALL
        .iter()
        .copied()
        .filter(|v| allowed.iter().any(|(av, _)| av == v))
        .collect();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider(allowed)))
        .with_protocol_versions(&protocol_versions(&versions))
        .map_err(|e| LoadError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .map_err(|e| LoadError::Tls(format!("the certificate or key is not usable: {e}")))?;
    cfg.enable_secret_extraction = secret_extraction;
    // No session tickets: with kernel TLS they would have to be sent before the keys are
    // handed over, and they would add bytes a tracer must not mistake for payload.
    cfg.send_tls13_tickets = 0;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client side; without `ca` any server certificate is accepted.
pub fn client_config(
    choice: &TlsChoice,
    ca: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, LoadError> {
    let allowed = allowed_pairs(choice);
    let provider = Arc::new(provider(&allowed));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(&choice.versions()))
        .map_err(|e| LoadError::Tls(e.to_string()))?;
    let mut cfg = match ca {
        Some(path) => {
            let pem = fs::read(path).map_err(|e| LoadError::read("--ca", path, &e))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| LoadError::Read {
                    what: "--ca",
                    path: path.display().to_string(),
                    reason: format!("not a PEM certificate file ({e})"),
                })?;
                roots.add(cert).map_err(|e| LoadError::Read {
                    what: "--ca",
                    path: path.display().to_string(),
                    reason: format!("unusable certificate ({e})"),
                })?;
            }
            if roots.is_empty() {
                return Err(LoadError::Read {
                    what: "--ca",
                    path: path.display().to_string(),
                    reason: "no CERTIFICATE section in it".into(),
                });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    };
    // Every connection makes a full handshake: comparable runs, no tickets to store.
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any certificate (a load generator talks to self-signed test servers) but still
/// checks the handshake signatures, so the TLS exchange itself is complete.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ring_suite_is_classified() {
        for s in rustls::crypto::ring::default_provider().cipher_suites {
            assert!(classify(s).is_some(), "{:?}", s.suite());
        }
    }

    #[test]
    fn restricted_provider_has_only_the_choice() {
        let choice = TlsChoice {
            version: Some(TlsVersion::Tls12),
            cipher: Some(Cipher::Chacha20Poly1305),
        };
        let p = provider(&allowed_pairs(&choice));
        assert_eq!(p.cipher_suites.len(), 2); // ECDSA and RSA flavours
        for s in p.cipher_suites {
            assert_eq!(
                classify(s),
                Some((TlsVersion::Tls12, Cipher::Chacha20Poly1305))
            );
        }
    }

    #[test]
    fn configs_build() {
        let allowed = allowed_pairs(&TlsChoice::default());
        server_config(&allowed, CertAndKey::self_signed().unwrap(), true).unwrap();
        client_config(&TlsChoice::default(), None).unwrap();
        let only13 = TlsChoice {
            version: Some(TlsVersion::Tls13),
            cipher: None,
        };
        client_config(&only13, None).unwrap();
    }
}
