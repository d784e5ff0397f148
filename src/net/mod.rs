//! The network stage: bind, accept, and turn a TCP connection into a WebSocket one.
//!
//! Every broadcast shard binds the same address with `SO_REUSEPORT` (glommio's listener sets it),
//! so the kernel spreads new connections across shards and no connection ever changes core.
//! [`accept_loop`] gives each accepted socket its own task that reads the upgrade request under
//! `handshake_timeout_ms` and `handshake_bytes_max`, then hands the socket to its shard. A client
//! that is slow, malformed or over a limit gets an HTTP error and is closed here; it never
//! reaches the shard's state.

pub mod handshake;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use http::StatusCode;

use crate::shard::ShardCore;
use handshake::{Limits, Reject, Upgrade};

/// Bytes read from a handshaking socket at once.
const HANDSHAKE_READ_BYTES: usize = 1024;

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A new TCP socket of `addr`'s family, not yet bound.
fn tcp_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
}

/// Fails if another process already listens on `addr`. The shards bind with `SO_REUSEPORT`,
/// which would otherwise let a second server start on a busy port and silently take a share of
/// its connections; a probe bound without `SO_REUSEPORT` is refused by any listener there.
/// Port 0 asks for a fresh port, so it is never busy.
pub fn ensure_unused(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = tcp_socket(addr)?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

/// Reserves the WebSocket port before the shards start, resolving port 0 to a real port that
/// every shard then binds. The returned socket is bound but not listening, so it takes no
/// connections; drop it once every shard has bound.
pub fn reserve(addr: SocketAddr) -> std::io::Result<(socket2::Socket, SocketAddr)> {
    let socket = tcp_socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .expect("a TCP socket has an IP address");
    Ok((socket, bound))
}

/// Accepts connections for `shard` until the task is cancelled.
pub async fn accept_loop(shard: Rc<ShardCore>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(handshake_then_serve(shard.clone(), stream)).detach();
            }
            Err(err) => {
                tracing::warn!(shard = shard.id, error = %err, "accept failed; retrying");
                glommio::timer::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Why a handshake ended without an upgrade.
enum Failed {
    Reject(Reject),
    /// The peer went away or the socket failed: nothing to answer.
    Gone,
}

async fn handshake_then_serve(shard: Rc<ShardCore>, mut stream: TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let config = shard.config.clone();
    let timeout = Duration::from_millis(config.handshake_timeout_ms);
    if !shard.has_room() {
        refuse_full(&shard, &mut stream, timeout).await;
        return;
    }
    let limits = Limits {
        request_bytes_max: config.handshake_bytes_max,
        channels_max: config.subscriptions_per_conn_max,
    };
    let outcome = glommio::timer::timeout(timeout, async {
        Ok(read_upgrade(&mut stream, limits).await)
    })
    .await;
    match outcome {
        Ok(Ok((_, _))) if !shard.has_room() => refuse_full(&shard, &mut stream, timeout).await,
        Ok(Ok((upgrade, mut buf))) => {
            if stream.write_all(&upgrade.response).await.is_err() {
                return;
            }
            buf.drain(..upgrade.request_bytes);
            if buf.capacity() > 0 && buf.is_empty() {
                buf = Vec::new();
            }
            shard.open_conn(stream, upgrade.channels, buf);
        }
        Ok(Err(Failed::Reject(reject))) => {
            tracing::debug!(status = %reject.status, reason = %reject.message, "handshake refused");
            answer(&mut stream, &reject, timeout).await;
        }
        Ok(Err(Failed::Gone)) => {}
        Err(_) => {
            tracing::debug!(shard = shard.id, "handshake timed out");
            let reject = Reject::new(
                StatusCode::REQUEST_TIMEOUT,
                "handshake_timeout",
                format!("the upgrade request did not arrive within {timeout:?}"),
            );
            answer(&mut stream, &reject, Duration::from_millis(100)).await;
        }
    }
}

/// Answers 503: the shard is at `connections_per_shard_max` or stopping.
async fn refuse_full(shard: &ShardCore, stream: &mut TcpStream, timeout: Duration) {
    shard.count_refused();
    let reject = Reject::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        "this shard is full or shutting down",
    );
    answer(stream, &reject, timeout).await;
}

/// Reads until a complete upgrade request, returning it with the bytes read so far.
async fn read_upgrade(
    stream: &mut TcpStream,
    limits: Limits,
) -> Result<(Upgrade, Vec<u8>), Failed> {
    let mut buf = Vec::with_capacity(HANDSHAKE_READ_BYTES);
    let mut chunk = [0u8; HANDSHAKE_READ_BYTES];
    loop {
        let read_bytes = stream.read(&mut chunk).await.map_err(|_| Failed::Gone)?;
        if read_bytes == 0 {
            return Err(Failed::Gone);
        }
        buf.extend_from_slice(&chunk[..read_bytes]);
        match handshake::parse_upgrade(&buf, limits) {
            Ok(Some(upgrade)) => return Ok((upgrade, buf)),
            Ok(None) => continue,
            Err(reject) => return Err(Failed::Reject(reject)),
        }
    }
}

/// Sends an HTTP error and closes, giving up after `timeout` on a peer that does not read.
async fn answer(stream: &mut TcpStream, reject: &Reject, timeout: Duration) {
    let response = reject.response();
    let sent = glommio::timer::timeout(timeout, async {
        stream.write_all(&response).await?;
        stream.close().await?;
        Ok(())
    })
    .await;
    if let Err(err) = sent {
        tracing::debug!(error = %err, "could not deliver the handshake refusal");
    }
}
