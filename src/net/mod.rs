//! The network stage: bind, accept, and turn a TCP connection into a WebSocket one.
//!
//! Every broadcast shard binds the same address with `SO_REUSEPORT` (glommio's listener sets it),
//! so the kernel spreads new connections across shards and no connection ever changes core.
//! This stage owns the pieces of a handshake that need no shard: reading the upgrade request
//! under its limits ([`read_upgrade`], [`handshake`]), checking its token ([`authorize`],
//! [`auth`]), answering an HTTP error or a file and closing ([`answer`], [`send_and_close`]),
//! TLS ([`tls`]), and backing off a failing accept ([`accept`], which both accept loops share).
//! The shard's accept loop (`shard::accept`) drives them for each accepted socket, so a client
//! that is slow, malformed or over a limit is answered and closed before it reaches the shard's
//! state. This module never holds a shard or a connection's state.

pub mod accept;
pub mod auth;
pub mod handshake;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use http::StatusCode;

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

/// Why a handshake ended without an upgrade.
pub enum Failed {
    Reject(Reject),
    /// The peer went away or the socket failed: nothing to answer.
    Gone,
}

/// Who an upgraded connection is: what its token grants (`None` when auth is off) and its
/// user, if it has one (PROTOCOL.md, "Users").
#[derive(Debug)]
pub struct Identity {
    pub grant: Option<auth::Grant>,
    /// The token's `sub`; with `auth = "none"`, the `?user=` it names.
    pub user: Option<Box<str>>,
}

/// Checks the upgrade's token when auth is on: 401 for a missing, invalid or expired one, 403
/// for connect-time `channels` outside its grant. `$user` needs no grant, only a user (400
/// without one); `channels` and the token's `subs` together stay within
/// `subscriptions_max` (400).
pub fn authorize(
    verifier: Option<&auth::Verifier>,
    upgrade: &handshake::Upgrade,
    subscriptions_max: usize,
) -> Result<Identity, Reject> {
    let identity = match verifier {
        None => Identity {
            grant: None,
            user: upgrade.user.as_deref().map(Box::from),
        },
        Some(verifier) => {
            let grant = verifier.verify(upgrade.token.as_deref()).map_err(|err| {
                Reject::new(StatusCode::UNAUTHORIZED, "unauthorized", err.to_string())
            })?;
            Identity {
                user: Some(grant.sub.as_str().into()),
                grant: Some(grant),
            }
        }
    };
    let own_stream = |pattern: &str| pattern == crate::channel::USER_CHANNEL;
    if identity.user.is_none() && upgrade.channels.iter().any(|pattern| own_stream(pattern)) {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            "channels=$user needs a user: a token's sub, or ?user= without auth",
        ));
    }
    if let Some(grant) = &identity.grant {
        if let Some(pattern) = upgrade
            .channels
            .iter()
            .filter(|pattern| !own_stream(pattern))
            .find(|pattern| !grant.may_subscribe(pattern))
        {
            return Err(Reject::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token does not grant channels={pattern}"),
            ));
        }
    }
    let subs = identity.grant.as_ref().map_or(0, |grant| grant.subs.len());
    let counted = upgrade.channels.iter().filter(|p| !own_stream(p)).count();
    if counted + subs > subscriptions_max {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "too_many_subscriptions",
            format!(
                "channels= and the token's subs name {} patterns; subscriptions_per_conn_max is \
                 {subscriptions_max}",
                counted + subs
            ),
        ));
    }
    Ok(identity)
}

/// Reads until a complete request, returning it with the bytes read so far.
pub async fn read_upgrade(
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
pub async fn answer(stream: &mut Transport, reject: &Reject, timeout: Duration) {
    send_and_close(stream, &reject.response(), timeout).await;
}

/// Sends a complete HTTP response and closes, giving up after `timeout` on a peer that does not
/// read.
pub async fn send_and_close(stream: &mut Transport, response: &[u8], timeout: Duration) {
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
