//! TLS for the clients (`wss://`, `https://`): the rustls client configuration the Rust client
//! and `corecast bench` connect with, and the words a failed handshake is reported in.
//!
//! Owns which certificates a client trusts: the CA certificates of a PEM file the operator
//! names (`--ca`, for a private CA or a self-signed server), or else Mozilla's root program
//! as `webpki-roots` carries it, built into the binary so that no host store is read. It is
//! compiled only with the `tls` feature, so the server, which needs none of it, links none
//! of it. Like the rest of this crate it never touches a file or a socket: the caller reads
//! the PEM bytes, and the connection runs the handshake.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// The certificates of `pem` (every `CERTIFICATE` block; other blocks are skipped). The error
/// says what is wrong with the text; the caller adds which file it came from.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("not PEM certificates: {err}"))?;
    if certificates.is_empty() {
        return Err("no CERTIFICATE block in it".to_string());
    }
    Ok(certificates)
}

/// The roots to trust: the certificates of `ca_pem` when given, else `webpki-roots`.
pub fn roots(ca_pem: Option<&[u8]>) -> Result<RootCertStore, String> {
    let Some(pem) = ca_pem else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut roots = RootCertStore::empty();
    for certificate in certificates(pem)? {
        roots
            .add(certificate)
            .map_err(|err| format!("a certificate cannot be a trust anchor: {err}"))?;
    }
    Ok(roots)
}

/// A client configuration trusting `roots`: rustls with the ring provider, TLS 1.2 and 1.3,
/// no client certificate.
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The name the server's certificate must carry for `host` (a DNS name or an IP literal).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|err| format!("{host:?} is not a host name TLS can verify: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_file_without_certificates_is_refused() {
        assert_eq!(
            certificates(b"hello").unwrap_err(),
            "no CERTIFICATE block in it"
        );
        assert!(roots(Some(b"")).is_err());
        assert!(!roots(None).unwrap().is_empty(), "webpki-roots");
    }

    #[test]
    fn server_names_take_hosts_and_ip_literals() {
        assert!(server_name("localhost").is_ok());
        assert!(server_name("::1").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("bad host").is_err());
    }
}
