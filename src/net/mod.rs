//! The network stage: bind, accept, and turn a TCP connection into a WebSocket one.
//!
//! Every broadcast shard binds the same address with `SO_REUSEPORT` (glommio's listener sets it),
//! so the kernel spreads new connections across shards and no connection ever changes core.
//! [`accept_loop`] gives each accepted socket its own task that reads the upgrade request under
//! `handshake_timeout_ms` and `handshake_bytes_max`, then hands the socket to its shard. A client
//! that is slow, malformed or over a limit gets an HTTP error and is closed here; it never
//! reaches the shard's state. So does a plain `GET` of the browser client (`/client.js`), which
//! gets the file and is closed. An accept that fails (out of file descriptors, say) is counted
//! and backed off, with a warning at most once per interval ([`accept`], which the control
//! plane's accept loop shares).

pub mod accept;
pub mod auth;
pub mod handshake;
pub mod tls;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use http::StatusCode;

use crate::ingest::admission::{self, Peer};
use crate::shard::{Place, Route, ShardCore};
use handshake::{Limits, Reject, Request};
use tls::Transport;

/// Bytes read from a handshaking socket at once.
const HANDSHAKE_READ_BYTES: usize = 1024;

/// Fails if a socket of this network namespace already listens on `addr`'s port at an
/// address that overlaps it (the same address, or either one the wildcard). The shards bind
/// with `SO_REUSEPORT`, which would otherwise let a second server start on a busy port and
/// silently take a share of its connections. The listeners are read from `/proc/net/tcp` and
/// `/proc/net/tcp6` rather than probed with a bind: a bind probe is also refused by the
/// TIME_WAIT connections a server that just stopped leaves on its port, and a restart must not
/// wait a minute for them. Port 0 asks for a fresh port, so it is never busy.
pub fn ensure_unused(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let table = match std::fs::read_to_string(path) {
            Ok(table) => table,
            // A kernel without IPv6 has no tcp6 table, and no IPv6 listener.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let busy = listeners(&table).find(|listener| overlaps(*listener, addr));
        if let Some(listener) = busy {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a socket already listens on {listener}"),
            ));
        }
    }
    Ok(())
}

/// The local addresses of the listening sockets in a `/proc/net/tcp` or `tcp6` table, whose
/// lines read `sl local_address rem_address st ...` with addresses in hex and state `0A` for
/// LISTEN.
fn listeners(table: &str) -> impl Iterator<Item = SocketAddr> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != "0A" {
            return None;
        }
        parse_proc_addr(local)
    })
}

/// Parses a `/proc/net/tcp{,6}` address, `IP:PORT` in hex: the IP as 32-bit words each printed
/// in the host's byte order (one for IPv4, four for IPv6), the port as a number.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = text.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for at in (0..ip_hex.len()).step_by(8) {
        let word = u32::from_str_radix(ip_hex.get(at..at + 8)?, 16).ok()?;
        bytes.extend(word.to_ne_bytes());
    }
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a listener on `listener` takes connections meant for `addr`: the same port, and
/// the same address or either one a wildcard (an IPv6 wildcard takes IPv4 too, dual-stack).
fn overlaps(listener: SocketAddr, addr: SocketAddr) -> bool {
    let canonical = |ip: std::net::IpAddr| ip.to_canonical();
    listener.port() == addr.port()
        && (listener.ip().is_unspecified()
            || addr.ip().is_unspecified()
            || canonical(listener.ip()) == canonical(addr.ip()))
}

/// Reserves the WebSocket port before the shards start, resolving port 0 to a real port that
/// every shard then binds. The returned socket is bound but not listening, so it takes no
/// connections; drop it once every shard has bound.
pub fn reserve(addr: SocketAddr) -> std::io::Result<(socket2::Socket, SocketAddr)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .expect("a TCP socket has an IP address");
    Ok((socket, bound))
}

/// Accepts connections for `shard` until the task is cancelled. A failed accept (out of file
/// descriptors, say) is counted and backed off (see [`accept::Backoff`]).
pub async fn accept_loop(shard: Rc<ShardCore>, listener: TcpListener) {
    let mut backoff = accept::Backoff::default();
    loop {
        match listener.accept().await {
            Ok(stream) => {
                backoff.succeeded();
                glommio::spawn_local(handshake_then_serve(shard.clone(), stream)).detach();
            }
            Err(err) => {
                shard.count_accept_error();
                let failed = backoff.failed(std::time::Instant::now());
                if let Some(failures) = failed.warn {
                    tracing::warn!(
                        shard = shard.id,
                        error = %err,
                        failures,
                        pause_ms = failed.pause.as_millis() as u64,
                        "accept failed; backing off (one warning per {:?} at most: failures \
                         counts those since the previous one)",
                        accept::WARN_INTERVAL
                    );
                }
                glommio::timer::sleep(failed.pause).await;
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

async fn handshake_then_serve(shard: Rc<ShardCore>, stream: TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let config = shard.config.clone();
    let timeout = Duration::from_millis(config.handshake_timeout_ms);
    let mut stream = match &shard.tls {
        None => Transport::Plain(stream),
        Some(acceptor) => match tls::accept(acceptor, stream, timeout).await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(shard = shard.id, error = %err, "TLS handshake failed");
                return;
            }
        },
    };
    if !shard.has_room() {
        refuse_full(&shard, &mut stream, timeout).await;
        return;
    }
    let limits = Limits {
        request_bytes_max: config.handshake_bytes_max,
        channels_max: config.subscriptions_per_conn_max,
        echo_path: config.echo_path.as_deref(),
        deflate: config.permessage_deflate,
        channel_bytes_max: config.channel_bytes_max,
        allowed_origins: &config.allowed_origins,
    };
    let outcome = glommio::timer::timeout(timeout, async {
        Ok(read_upgrade(&mut stream, limits).await)
    })
    .await;
    match outcome {
        Ok(Ok((_, _))) if !shard.has_room() => refuse_full(&shard, &mut stream, timeout).await,
        Ok(Ok((Request::Asset(asset), _))) => {
            send_and_close(&mut stream, &handshake::asset_response(asset), timeout).await;
        }
        Ok(Ok((Request::Upgrade(upgrade), mut buf))) => {
            let grant = match authorize(&shard, &upgrade) {
                Ok(grant) => grant,
                Err(reject) => {
                    tracing::debug!(status = %reject.status, reason = %reject.message, "upgrade refused");
                    answer(&mut stream, &reject, timeout).await;
                    return;
                }
            };
            let tenant = grant.as_ref().and_then(|grant| grant.tenant.as_deref());
            let admitted = if admission::needed(&shard.config, tenant) {
                admit(&shard, &stream, tenant, timeout).await.map(Some)
            } else {
                Ok(None)
            };
            let place = match admitted {
                Ok(place) => place,
                Err(reject) => {
                    tracing::debug!(status = %reject.status, reason = %reject.message, "upgrade refused");
                    answer(&mut stream, &reject, timeout).await;
                    return;
                }
            };
            if stream.write_all(&upgrade.response).await.is_err() {
                return;
            }
            buf.drain(..upgrade.request_bytes);
            if buf.capacity() > 0 && buf.is_empty() {
                buf = Vec::new();
            }
            let route = if upgrade.echo {
                Route::Echo
            } else {
                Route::Broadcast(upgrade.channels)
            };
            shard.open_conn(stream, route, grant, upgrade.deflate, place, buf);
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

/// Checks the upgrade's token when auth is on: 401 for a missing, invalid or expired one, 403
/// for connect-time `channels` outside its grant. `None` when auth is off.
fn authorize(
    shard: &ShardCore,
    upgrade: &handshake::Upgrade,
) -> Result<Option<auth::Grant>, Reject> {
    let Some(verifier) = &shard.verifier else {
        return Ok(None);
    };
    let grant = verifier
        .verify(upgrade.token.as_deref())
        .map_err(|err| Reject::new(StatusCode::UNAUTHORIZED, "unauthorized", err.to_string()))?;
    if let Some(pattern) = upgrade
        .channels
        .iter()
        .find(|pattern| !grant.may_subscribe(pattern))
    {
        return Err(Reject::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token does not grant channels={pattern}"),
        ));
    }
    Ok(Some(grant))
}

/// A place under the connection limits the ingest core keeps (see
/// [`crate::ingest::admission`]): 503 or 429 when refused, 503 when the ingest core does not
/// answer within `timeout`.
async fn admit(
    shard: &Rc<ShardCore>,
    stream: &Transport,
    tenant: Option<&str>,
    timeout: Duration,
) -> Result<Place, Reject> {
    let ip = stream
        .peer_addr()
        .map_err(|err| {
            Reject::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the connection has no peer address: {err}"),
            )
        })?
        .ip();
    let peer = Peer::new(ip, tenant.map(Box::from));
    let verdict = glommio::timer::timeout(timeout, async { Ok(shard.admit(peer).await) }).await;
    match verdict {
        Ok(Ok(place)) => Ok(place),
        Ok(Err(refused)) => {
            shard.count_refused();
            Err(Reject::new(
                refused.status(),
                "too_many_connections",
                refused.to_string(),
            ))
        }
        Err(_) => Err(Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("the server did not admit the connection within {timeout:?}; retry later"),
        )),
    }
}

/// Answers 503: the shard is at `connections_per_shard_max` or stopping.
async fn refuse_full(shard: &ShardCore, stream: &mut Transport, timeout: Duration) {
    shard.count_refused();
    let reject = Reject::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        "this shard is full or shutting down",
    );
    answer(stream, &reject, timeout).await;
}

/// Reads until a complete request, returning it with the bytes read so far.
async fn read_upgrade(
    stream: &mut Transport,
    limits: Limits<'_>,
) -> Result<(Request, Vec<u8>), Failed> {
    let mut buf = Vec::with_capacity(HANDSHAKE_READ_BYTES);
    let mut chunk = [0u8; HANDSHAKE_READ_BYTES];
    loop {
        let read_bytes = stream.read(&mut chunk).await.map_err(|_| Failed::Gone)?;
        if read_bytes == 0 {
            return Err(Failed::Gone);
        }
        buf.extend_from_slice(&chunk[..read_bytes]);
        match handshake::parse_request(&buf, limits) {
            Ok(Some(request)) => return Ok((request, buf)),
            Ok(None) => continue,
            Err(reject) => return Err(Failed::Reject(reject)),
        }
    }
}

/// Sends an HTTP error and closes, giving up after `timeout` on a peer that does not read.
async fn answer(stream: &mut Transport, reject: &Reject, timeout: Duration) {
    send_and_close(stream, &reject.response(), timeout).await;
}

/// Sends a complete HTTP response and closes, giving up after `timeout` on a peer that does not
/// read.
async fn send_and_close(stream: &mut Transport, response: &[u8], timeout: Duration) {
    let sent = glommio::timer::timeout(timeout, async {
        stream.write_all(response).await?;
        stream.close().await?;
        Ok(())
    })
    .await;
    if let Err(err) = sent {
        tracing::debug!(error = %err, "could not deliver the HTTP response");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener as StdListener, TcpStream as StdStream};

    #[test]
    fn proc_tables_give_the_listeners_local_addresses() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n\
            \x20  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
            \x20  1: 0100007F:1F90 0100007F:C350 06 00000000:00000000 03:00000DAC 00000000\n\
            \x20  2: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n";
        let found: Vec<SocketAddr> = listeners(tcp).collect();
        assert_eq!(
            found,
            [
                "127.0.0.1:8080".parse().unwrap(),
                "0.0.0.0:8081".parse().unwrap()
            ],
            "the TIME_WAIT (06) line is not a listener"
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
            \x20  0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A\n";
        assert_eq!(
            listeners(tcp6).collect::<Vec<_>>(),
            ["[::1]:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(parse_proc_addr("zz:1F90"), None);
        assert_eq!(parse_proc_addr("0100007F"), None);
    }

    #[test]
    fn wildcards_overlap_every_address_of_the_port() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("127.0.0.1:80"), addr("0.0.0.0:80")));
        assert!(overlaps(addr("[::]:80"), addr("10.0.0.1:80")));
        assert!(overlaps(
            addr("[::ffff:127.0.0.1]:80"),
            addr("127.0.0.1:80")
        ));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!overlaps(addr("0.0.0.0:80"), addr("0.0.0.0:81")));
    }

    /// A live listener is found, and the TIME_WAIT connections it leaves on its port once it
    /// has closed them (the server closes first, as corecast does) do not count: the port can
    /// be checked and reserved again at once. The listener binds as the shards do, with
    /// `SO_REUSEPORT`, which its TIME_WAIT connections keep.
    #[test]
    fn a_listener_is_busy_and_its_time_wait_connections_are_not() {
        let (socket, addr) = reserve(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        socket.listen(8).unwrap();
        let listener = StdListener::from(socket);
        let error = ensure_unused(addr).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(
            error.to_string(),
            format!("a socket already listens on {addr}")
        );
        assert!(ensure_unused(SocketAddr::from(([0, 0, 0, 0], addr.port()))).is_err());
        let mut client = StdStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(accepted);
        // The client reads the server's FIN, then closes: the server's end is in TIME_WAIT.
        assert_eq!(client.read(&mut [0; 1]).unwrap(), 0);
        drop(client);
        drop(listener);
        ensure_unused(addr).unwrap();
        let (reservation, bound) = reserve(addr).unwrap();
        assert_eq!(bound, addr);
        drop(reservation);
    }
}
