//! Optional TLS (rustls, ring provider) for the WebSocket port (`wss://`) and the control plane
//! (HTTPS), with certificates from the config.
//!
//! This module owns loading a certificate chain and its key into a rustls `ServerConfig`, once
//! at start-up, so a bad file stops the server before it listens, naming the file; and
//! [`Transport`], the stream every connection is read and written through: plain TCP, or TLS
//! over it (futures-rustls). It never decides anything about HTTP or WebSocket.
//!
//! What TLS costs: encode-once still holds for the plaintext frame, but each connection
//! encrypts it on its own, so a TLS connection never takes the shard's direct-`send()` short
//! cut ([`crate::shard::conn::ConnHandle::write_now`]): it has no descriptor to lend, and its
//! frames go through its outbox and its task, which writes them through rustls.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate file and its key, as the config names them.
pub struct Files<'a> {
    /// The config keys, for error messages (`tls_cert_file` or `api_tls_cert_file`).
    pub cert_key: &'static str,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// A server's TLS settings, read from PEM files: the chain (leaf first) and its private key.
pub fn acceptor(files: &Files<'_>) -> Result<TlsAcceptor, String> {
    let named = |path: &Path, err: &dyn std::fmt::Display| {
        format!("{} {}: {err}", files.cert_key, path.display())
    };
    let chain = CertificateDer::pem_file_iter(files.cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| named(files.cert, &err))?;
    if chain.is_empty() {
        return Err(named(files.cert, &"holds no CERTIFICATE in PEM"));
    }
    let key = PrivateKeyDer::from_pem_file(files.key).map_err(|err| named(files.key, &err))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|err| {
            format!(
                "{} {} with its key {}: {err}",
                files.cert_key,
                files.cert.display(),
                files.key.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the TLS handshake on an accepted socket, giving up after `timeout` (a client that
/// opens a socket and sends nothing is cut here, as at the HTTP upgrade).
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> io::Result<Transport> {
    glommio::timer::timeout(timeout, async {
        Ok(acceptor
            .accept(stream)
            .await
            .map_err(glommio::GlommioError::from))
    })
    .await
    .and_then(|accepted| accepted)
    .map(|stream| Transport::Tls(Box::new(stream)))
    .map_err(io::Error::from)
}

/// A connection's byte stream: the TCP socket, or TLS over it.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// The socket's descriptor, for writes that bypass the stream: plain TCP only, since a TLS
    /// connection's bytes must go through rustls.
    pub fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Transport::Plain(stream) => Some(stream.as_raw_fd()),
            Transport::Tls(_) => None,
        }
    }

    /// The socket's descriptor, whatever runs over it (for `shutdown`).
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Transport::Plain(stream) => stream.as_raw_fd(),
            Transport::Tls(stream) => stream.get_ref().0.as_raw_fd(),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        let stream = match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(stream) => stream.get_ref().0,
        };
        stream.peer_addr().map_err(io::Error::from)
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    /// Plain TCP has nothing buffered; TLS may hold records the socket did not take yet.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(_) => Poll::Ready(Ok(())),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_close(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_pem_chain_and_key_load_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("corecast-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = write_pair(&dir);
        let files = |cert: &Path, key: &Path| {
            acceptor(&Files {
                cert_key: "tls_cert_file",
                cert,
                key,
            })
        };
        assert!(files(&cert, &key).is_ok());
        let missing = dir.join("missing.pem");
        let err = files(&missing, &key).err().unwrap();
        assert!(
            err.starts_with("tls_cert_file ") && err.contains("missing.pem"),
            "{err}"
        );
        let err = files(&key, &key).err().unwrap();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let err = files(&cert, &cert).err().unwrap();
        assert!(err.contains("cert.pem"), "a certificate is no key: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
