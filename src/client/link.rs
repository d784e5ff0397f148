//! The byte stream under a connection: plain TCP for `ws://`, TLS over TCP for `wss://`.
//!
//! Owns the socket and, for `wss://`, the rustls connection state, shared by the two halves
//! of a connection: the session thread reads, the application's calls write under the
//! client's lock. A TLS read never holds the TLS state while it waits on the socket (only
//! while it decrypts what came), so a write is never held up behind an idle read. It knows
//! nothing of WebSocket frames: the session and `State` hand it bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection};

/// Bytes of ciphertext read from the socket at a time. Below rustls's received-plaintext limit
/// (16 KiB) so that one read's records always fit behind what the reader has taken.
const TLS_READ_BYTES: usize = 8 * 1024;

/// One connection's stream; [`Link::try_clone`] makes the writer's half.
pub struct Link {
    stream: TcpStream,
    /// The TLS state of a `wss://` connection, shared by both halves; `None` for `ws://`.
    tls: Option<Arc<Mutex<ClientConnection>>>,
}

impl Link {
    /// A `ws://` connection's stream.
    pub fn plain(stream: TcpStream) -> Self {
        Self { stream, tls: None }
    }

    /// Runs the TLS handshake with `server_name` on `stream`, each read waiting at most the
    /// stream's read timeout (which the caller sets from its deadline). The error is rustls's
    /// reason (certificate, protocol) or the socket's.
    pub fn tls(
        mut stream: TcpStream,
        config: Arc<ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> std::io::Result<Self> {
        let mut tls = ClientConnection::new(config, server_name).map_err(std::io::Error::other)?;
        // `complete_io` fails on an end of stream mid-handshake, and a read past the timeout
        // fails as `WouldBlock`, so this loop ends.
        while tls.is_handshaking() {
            tls.complete_io(&mut stream)?;
        }
        Ok(Self {
            stream,
            tls: Some(Arc::new(Mutex::new(tls))),
        })
    }

    /// The other half: the same socket and the same TLS state.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            stream: self.stream.try_clone()?,
            tls: self.tls.clone(),
        })
    }

    pub fn set_read_timeout(&self, wait: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(wait)
    }

    /// Shuts the socket down: the other half's read and write fail from then on.
    pub fn shutdown(&self) -> std::io::Result<()> {
        self.stream.shutdown(Shutdown::Both)
    }

    /// Reads what is there, waiting at most the read timeout (`WouldBlock` or `TimedOut` when
    /// nothing came); 0 at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.stream.read(buf);
        };
        loop {
            match lock(tls).reader().read(buf) {
                Ok(read) => return Ok(read),
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            let mut ciphertext = [0; TLS_READ_BYTES];
            let read = self.stream.read(&mut ciphertext)?;
            if read == 0 {
                return Ok(0);
            }
            let mut tls = lock(tls);
            let mut unread = &ciphertext[..read];
            while !unread.is_empty() {
                tls.read_tls(&mut unread)?;
                tls.process_new_packets().map_err(std::io::Error::other)?;
            }
            // An alert or a key update to answer.
            while tls.wants_write() {
                tls.write_tls(&mut &self.stream)?;
            }
        }
    }

    /// Writes all of `bytes`, each socket write waiting at most the write timeout.
    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(tls) = &self.tls else {
            return self.stream.write_all(bytes);
        };
        let mut tls = lock(tls);
        tls.writer().write_all(bytes)?;
        while tls.wants_write() {
            tls.write_tls(&mut &self.stream)?;
        }
        Ok(())
    }
}

fn lock(tls: &Mutex<ClientConnection>) -> MutexGuard<'_, ClientConnection> {
    // A panic while holding the lock left rustls's buffers as they were; the connection is
    // replaced soon after anyway.
    tls.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
