//! A shard's accept loop: every accepted socket gets its own task that reads the upgrade under
//! `handshake_timeout_ms` and `handshake_bytes_max` (with [`crate::net`]'s pieces), asks for a
//! place under the connection limits, and hands the upgraded socket to the shard.
//!
//! A client that is slow, malformed or over a limit gets an HTTP error and is closed here; it
//! never reaches the shard's state. So does a plain `GET` of the browser client (`/client.js`),
//! which gets the file and is closed. An accept that fails (out of file descriptors, say) is
//! counted and backed off, with a warning at most once per interval
//! ([`crate::net::accept::Backoff`]).

use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use http::StatusCode;

use super::{Place, Route, ShardCore};
use crate::channel;
use crate::msg::Peer;
use crate::net::handshake::{self, Limits, Reject, Request};
use crate::net::tls::{self, Transport};
use crate::net::{accept, answer, authorize, read_upgrade, send_and_close, Failed};

/// Accepts connections for `shard` until the task is cancelled. A failed accept (out of file
/// descriptors, say) is counted and backed off (see [`accept::Backoff`]).
pub async fn run(shard: Rc<ShardCore>, listener: TcpListener) {
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
            let max = config.subscriptions_per_conn_max;
            let identity = match authorize(shard.verifier.as_deref(), &upgrade, max) {
                Ok(identity) => identity,
                Err(reject) => {
                    tracing::debug!(status = %reject.status, reason = %reject.message, "upgrade refused");
                    answer(&mut stream, &reject, timeout).await;
                    return;
                }
            };
            let tenant = identity
                .grant
                .as_ref()
                .and_then(|grant| grant.tenant.as_deref());
            let user = identity.user.is_some() && config.connections_per_user_max > 0;
            let admitted = if config.admission_needed(tenant, user) {
                // The user is counted by its stream's full name, unique across tenants.
                let user = identity.user.as_deref().filter(|_| user);
                let user = user.map(|user| channel::user_stream(tenant, user));
                admit(&shard, &stream, tenant, user, timeout)
                    .await
                    .map(Some)
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
            shard.open_conn(stream, route, identity, upgrade.deflate, place, buf);
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

/// A place under the connection limits the ingest core keeps (see
/// [`crate::ingest::admission`]): 503 or 429 when refused, 503 when the ingest core does not
/// answer within `timeout`.
async fn admit(
    shard: &Rc<ShardCore>,
    stream: &Transport,
    tenant: Option<&str>,
    user: Option<String>,
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
    let peer = Peer::new(ip, tenant.map(Box::from), user.map(String::into_boxed_str));
    let verdict = glommio::timer::timeout(timeout, async { Ok(shard.admit(peer).await) }).await;
    match verdict {
        Ok(Ok(place)) => Ok(place),
        Ok(Err(refused)) => {
            shard.count_refused();
            Err(Reject::new(
                refused.status(),
                refused.code(),
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
