//! The control-plane HTTP API, served by hyper on the ingest core's glommio executor.
//!
//! Routes: `POST /v1/publish`, `POST /v1/publish/batch` (to a channel, or to a user's
//! `$user`), `POST /v1/users/disconnect`, `/v1/users/subscribe` and `/v1/users/unsubscribe`
//! (acts on every connection of a user), `GET /healthz`, `GET /v1/stats`,
//! `GET /v1/channels`, `GET /v1/history`, `GET /v1/presence`, `GET /metrics` (Prometheus; see
//! [`super::metrics`]), and `GET /dashboard`, a live page fed by `$sys.stats` (see
//! [`super::sys_stats`]) with the browser client it uses (`/client.js`, `/client.d.ts`). Bodies are read under `publish_body_bytes_max` and validated with sonic-rs
//! before anything is queued, so a bad request never reaches the sequencer. Every error is a
//! JSON body `{"error":{"code":..,"message":..}}` with the contract's status. A body nested
//! deeper than `json_depth_max` is refused with 400 before any parser reads it.
//!
//! No client can wedge it: at most `api_connections_max` connections are served at once (one
//! more is answered 503 and closed, and the accept loop backs off when accepting fails, see
//! [`crate::net::accept`]); each connection runs through [`api_stream::Guarded`], which keeps
//! its idle and header deadlines and puts hyper's own error answers in JSON; a body must
//! arrive within `api_body_timeout_ms` (else 408), and the bodies being read hold at most
//! `api_body_bytes_in_flight_max` bytes together (past it 503). Every refusal and timeout is
//! counted in [`Plane`]'s [`ApiStats`], which `/v1/stats` (`api`) and `/metrics` show.

use std::borrow::Cow;
use std::cell::Cell;
use std::convert::Infallible;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_channel::oneshot;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use sonic_rs::LazyValue;

use super::api_stream::{self, Ended, Exchange, Guarded};
use super::metrics::{self, Snapshot};
use super::{IngestCore, Priority, PublishError};
use crate::channel;
use crate::config::Config;
use crate::msg::{AckRow, Answer, NamespaceStats, QueryKind, ShardReport, UserAct};
use crate::net::accept;
use crate::net::handshake::{ErrorBody, Reject};
use crate::net::tls::{self, Transport};
use futures_rustls::TlsAcceptor;
use std::time::Duration;

type HttpResponse = Response<Full<Bytes>>;

/// Connections refused at once at most (each answered 503 and lingered on, for up to twice
/// [`api_stream::LINGER`]); past it a refused connection is closed without an answer.
const REFUSALS_MAX: usize = 64;

/// The control plane's own state on the ingest core: how many connections it serves, how
/// much its request bodies hold, and what it refused.
#[derive(Debug, Default)]
pub struct Plane {
    stats: Cell<ApiStats>,
    /// Connections being refused now (answered, lingered on), at most [`REFUSALS_MAX`].
    refusing: Cell<usize>,
}

/// The control plane's counters, for `/v1/stats` (`api`) and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ApiStats {
    /// Connections open now, at most `api_connections_max`.
    pub connections: usize,
    /// Connections answered 503 at accept because `api_connections_max` were open.
    pub connections_refused_total: u64,
    /// Accepts that failed (out of file descriptors, say); see [`crate::net::accept`].
    pub accept_errors_total: u64,
    /// Connections closed after `api_idle_timeout_ms` without a request.
    pub idle_timeouts_total: u64,
    /// Requests answered 408 `header_timeout` (`api_header_timeout_ms`).
    pub header_timeouts_total: u64,
    /// Requests answered 408 `body_timeout` (`api_body_timeout_ms`).
    pub body_timeouts_total: u64,
    /// Connections closed because the client did not read a response (`api_idle_timeout_ms`).
    pub send_timeouts_total: u64,
    /// Requests hyper could not parse (answered 400, 414 or 431) and HTTP/2 prefaces (505).
    pub malformed_requests_total: u64,
    /// Bodies answered 503 because `api_body_bytes_in_flight_max` was reached.
    pub bodies_refused_total: u64,
    /// Bytes the request bodies being read hold now.
    pub body_bytes_in_flight: usize,
}

impl Plane {
    pub fn stats(&self) -> ApiStats {
        self.stats.get()
    }

    fn update(&self, change: impl FnOnce(&mut ApiStats)) {
        let mut stats = self.stats.get();
        change(&mut stats);
        self.stats.set(stats);
    }
}

/// A connection's place under `api_connections_max`, given back when it is dropped.
struct Place(Rc<IngestCore>);

impl Place {
    fn take(core: Rc<IngestCore>) -> Place {
        core.api.update(|stats| stats.connections += 1);
        Place(core)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.api.update(|stats| stats.connections -= 1);
    }
}

/// The deadlines and limits of a control-plane connection's stream.
fn stream_limits(config: &Config) -> api_stream::Limits {
    api_stream::Limits {
        header_timeout: Duration::from_millis(config.api_header_timeout_ms),
        idle_timeout: Duration::from_millis(config.api_idle_timeout_ms),
        head_bytes_max: config.api_head_bytes_max,
    }
}

/// Accepts control-plane connections until the task is cancelled; over TLS with `tls`.
pub async fn serve(
    core: Rc<IngestCore>,
    listener: glommio::net::TcpListener,
    tls: Option<TlsAcceptor>,
) {
    let mut backoff = accept::Backoff::default();
    loop {
        match listener.accept().await {
            Ok(stream) => {
                backoff.succeeded();
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                }
                if core.api.stats().connections >= core.config.api_connections_max {
                    refuse(&core, stream, tls.is_some());
                    continue;
                }
                let place = Place::take(core.clone());
                let tls = tls.clone();
                glommio::spawn_local(async move {
                    let core = place.0.clone();
                    let timeout = Duration::from_millis(core.config.handshake_timeout_ms);
                    match tls {
                        None => serve_connection(core, Transport::Plain(stream)).await,
                        Some(tls) => match tls::accept(&tls, stream, timeout).await {
                            Ok(stream) => serve_connection(core, stream).await,
                            Err(err) => {
                                tracing::debug!(error = %err, "control-plane TLS handshake failed")
                            }
                        },
                    }
                    drop(place);
                })
                .detach();
            }
            Err(err) => {
                core.api.update(|stats| stats.accept_errors_total += 1);
                let failed = backoff.failed(Instant::now());
                if let Some(failures) = failed.warn {
                    tracing::warn!(
                        error = %err,
                        failures,
                        pause_ms = failed.pause.as_millis() as u64,
                        "control-plane accept failed; backing off (one warning per {:?} at \
                         most: failures counts those since the previous one)",
                        accept::WARN_INTERVAL
                    );
                }
                glommio::timer::sleep(failed.pause).await;
            }
        }
    }
}

/// Answers a connection over `api_connections_max` with 503 `too_many_connections` and closes
/// it. A TLS one, or one past [`REFUSALS_MAX`] refused at once, is closed without an answer
/// (a TLS answer would first need a handshake).
fn refuse(core: &Rc<IngestCore>, stream: glommio::net::TcpStream, tls: bool) {
    core.api
        .update(|stats| stats.connections_refused_total += 1);
    if tls || core.api.refusing.get() >= REFUSALS_MAX {
        return;
    }
    let answer = Reject::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        format!(
            "the control plane serves api_connections_max = {} connections already; retry later",
            core.config.api_connections_max
        ),
    )
    .response();
    let limits = api_stream::Limits {
        idle_timeout: api_stream::LINGER,
        ..stream_limits(&core.config)
    };
    let mut stream = Guarded::refusing(Transport::Plain(stream), limits, answer);
    core.api.refusing.set(core.api.refusing.get() + 1);
    let core = core.clone();
    glommio::spawn_local(async move {
        std::future::poll_fn(|cx| stream.poll_goodbye(cx)).await;
        core.api.refusing.set(core.api.refusing.get() - 1);
    })
    .detach();
}

async fn serve_connection(core: Rc<IngestCore>, stream: Transport) {
    let exchange = Rc::new(Exchange::default());
    let stream = Guarded::new(stream, stream_limits(&core.config), exchange.clone());
    let io = smol_hyper::rt::FuturesIo::new(stream);
    let service_core = core.clone();
    let taken = exchange.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        taken.took(request.method() == Method::HEAD);
        let core = service_core.clone();
        async move { Ok::<_, Infallible>(route(&core, request).await) }
    });
    // Flat writes: hyper then hands each response head to the stream in one piece.
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .max_buf_size(core.config.api_head_bytes_max)
        .writev(false)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(error = %err, "control-plane connection ended with an error");
    }
    match exchange.ended() {
        Some(Ended::IdleTimeout) => core.api.update(|stats| stats.idle_timeouts_total += 1),
        Some(Ended::HeaderTimeout) => core.api.update(|stats| stats.header_timeouts_total += 1),
        Some(Ended::SendTimeout) => core.api.update(|stats| stats.send_timeouts_total += 1),
        Some(Ended::Malformed | Ended::Http2) => {
            core.api.update(|stats| stats.malformed_requests_total += 1);
        }
        Some(Ended::Refused) | None => {}
    }
}

/// A JSON response.
fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    let body = sonic_rs::to_vec(body).expect("response structs serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}

/// The contract's error body.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    json(status, &ErrorBody::new(code, &message.into()))
}

/// `response` with `connection: close`: for a refusal that leaves the body unread.
fn closing(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

async fn route(core: &IngestCore, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let allowed = match path.as_str() {
        "/v1/publish"
        | "/v1/publish/batch"
        | "/v1/users/disconnect"
        | "/v1/users/subscribe"
        | "/v1/users/unsubscribe" => Method::POST,
        "/healthz" | "/v1/stats" | "/v1/channels" | "/v1/history" | "/v1/presence" | "/metrics"
        | "/dashboard" | "/client.js" | "/client.d.ts" => Method::GET,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {path:?}"),
            )
        }
    };
    if method != allowed {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} takes {allowed}"),
        );
        response.headers_mut().insert(
            header::ALLOW,
            header::HeaderValue::from_static(if allowed == Method::POST {
                "POST"
            } else {
                "GET"
            }),
        );
        return response;
    }
    let open = matches!(
        path.as_str(),
        "/healthz" | "/dashboard" | "/client.js" | "/client.d.ts"
    );
    let caller = if open {
        Caller::Operator
    } else {
        match caller(core, &request) {
            Ok(caller) => caller,
            Err((status, code, message)) => {
                let mut response = error(status, code, message);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return response;
            }
        }
    };
    let tenant_route = matches!(
        path.as_str(),
        "/v1/publish"
            | "/v1/publish/batch"
            | "/v1/history"
            | "/v1/presence"
            | "/v1/users/disconnect"
            | "/v1/users/subscribe"
            | "/v1/users/unsubscribe"
    );
    if let (Caller::Tenant(tenant), false) = (&caller, tenant_route) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this key is tenant {tenant:?}'s: it may publish, read history and presence \
                 and act on its users; {path} needs an operator key"
            ),
        );
    }
    match path.as_str() {
        "/healthz" if core.is_stopping() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &sonic_rs::json!({"status": "stopping"}),
        ),
        "/healthz" => json(StatusCode::OK, &sonic_rs::json!({"status": "ok"})),
        "/v1/stats" => stats(core).await,
        "/metrics" => prometheus(core).await,
        "/v1/channels" => channels(core).await,
        "/v1/history" => history(core, request.uri().query().unwrap_or(""), &caller),
        "/v1/presence" => presence(core, request.uri().query().unwrap_or(""), &caller).await,
        "/dashboard" => dashboard(core),
        "/client.js" | "/client.d.ts" => {
            let asset = crate::web::asset(&path).expect("routed above");
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, asset.content_type)
                .body(Full::new(Bytes::from_static(asset.body)))
                .expect("a static response is valid")
        }
        "/v1/publish" => match read_body(core, request).await {
            Ok(body) => publish(core, &body, &caller).await,
            Err(response) => response,
        },
        "/v1/users/disconnect" | "/v1/users/subscribe" | "/v1/users/unsubscribe" => {
            match read_body(core, request).await {
                Ok(body) => user_act(core, &path, &body, &caller).await,
                Err(response) => response,
            }
        }
        _ => match read_body(core, request).await {
            Ok(body) => publish_batch(core, &body, &caller).await,
            Err(response) => response,
        },
    }
}

/// Who sends a control-plane request, by the key it presents (see `api_keys`).
enum Caller {
    /// An unscoped key, or anyone when no key is configured: every route, every tenant.
    Operator,
    /// A tenant's key: publishes into that tenant and reads its history, nothing else.
    Tenant(Box<str>),
}

/// The caller of `request`: 401 without a configured key in `Authorization: Bearer`.
fn caller(core: &IngestCore, request: &Request<Incoming>) -> Result<Caller, Refusal> {
    use subtle::ConstantTimeEq;
    let keys = &core.config.api_keys;
    if keys.is_empty() {
        return Ok(Caller::Operator);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    // Every key is compared, in constant time each, so timing tells nothing of which matched.
    let found = presented.and_then(|presented| {
        keys.iter().fold(None, |found, key| {
            let same = bool::from(key.key.as_bytes().ct_eq(presented.as_bytes()));
            found.or(same.then_some(key))
        })
    });
    match found {
        Some(key) => Ok(match &key.tenant {
            Some(tenant) => Caller::Tenant(tenant.as_str().into()),
            None => Caller::Operator,
        }),
        None => Err((
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            if presented.is_some() {
                "the bearer key is not one of api_keys"
            } else {
                "this control plane needs a key: send Authorization: Bearer <key>"
            }
            .into(),
        )),
    }
}

/// The tenant a request acts in: the one it names (`asked`), which a tenant's key may only
/// name as its own and otherwise implies.
fn tenant_of(caller: &Caller, asked: Option<&str>) -> Result<Option<Box<str>>, Refusal> {
    match (caller, asked) {
        (Caller::Tenant(own), None) => Ok(Some(own.clone())),
        (Caller::Tenant(own), Some(asked)) if *asked == **own => Ok(Some(own.clone())),
        (Caller::Tenant(own), Some(_)) => Err((
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key acts in tenant {own:?} only"),
        )),
        (Caller::Operator, None) => Ok(None),
        (Caller::Operator, Some(asked)) => match channel::validate_tenant(asked) {
            Ok(()) => Ok(Some(asked.into())),
            Err(why) => Err((StatusCode::BAD_REQUEST, "bad_request", why)),
        },
    }
}

/// The channel a query names (`?channel=`, one exact name, as `what` is kept per channel) and
/// its full name in the tenant the caller acts in: 400 without one or for a bad name, 403 for a
/// tenant the caller's key may not name.
fn query_channel(
    core: &IngestCore,
    caller: &Caller,
    channel: Option<String>,
    tenant: Option<String>,
    what: &str,
) -> Result<(String, String), Refusal> {
    let Some(name) = channel else {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing parameter `channel`".into(),
        ));
    };
    let scope = tenant_of(caller, tenant.as_deref())?;
    check_name(
        core,
        &name,
        &format!(" ({what} is per channel: no wildcards)"),
    )?;
    let full = match scope {
        Some(tenant) => channel::scoped(&tenant, &name),
        None => name.clone(),
    };
    Ok((name, full))
}

/// Checks a channel name from a request against the contract and `channel_bytes_max`.
fn check_name(core: &IngestCore, name: &str, what: &str) -> Result<(), Refusal> {
    let shown: String = name.chars().take(64).collect();
    channel::check_length(name, core.config.channel_bytes_max)
        .and_then(|()| channel::validate_channel(name))
        .map_err(|err| {
            (
                StatusCode::BAD_REQUEST,
                "invalid_channel",
                format!("invalid channel {shown:?}: {err}{what}"),
            )
        })
}

/// A request body read whole. It holds its share of `api_body_bytes_in_flight_max` until it is
/// dropped, when the route is done with it.
struct Body<'a> {
    bytes: BodyBuf,
    _share: Share<'a>,
}

impl std::ops::Deref for Body<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

/// Bodies from this size up are read into pages of their own (see [`BodyBuf`]); smaller ones,
/// most publishes, into the heap.
const BODY_MAPPED_BYTES_MIN: usize = 64 * 1024;

/// Where a body is read into. A large one gets pages of its own from the kernel, given back
/// to it when the body is dropped: glibc's malloc keeps freed blocks of that size in its
/// arenas once it has freed one (its mmap threshold rises), so bodies read into the heap
/// left their peak resident after they closed (measured in the README's Limits section).
enum BodyBuf {
    Heap(Vec<u8>),
    Mapped { pages: memmap2::MmapMut, len: usize },
}

impl BodyBuf {
    /// A buffer for a body of `declared` bytes, or of a length it does not say.
    fn new(declared: Option<usize>) -> io::Result<BodyBuf> {
        Ok(match declared {
            Some(len) if len >= BODY_MAPPED_BYTES_MIN => BodyBuf::Mapped {
                pages: memmap2::MmapMut::map_anon(len)?,
                len: 0,
            },
            Some(len) => BodyBuf::Heap(Vec::with_capacity(len)),
            None => BodyBuf::Heap(Vec::new()),
        })
    }

    fn len(&self) -> usize {
        match self {
            BodyBuf::Heap(bytes) => bytes.len(),
            BodyBuf::Mapped { len, .. } => *len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            BodyBuf::Heap(bytes) => bytes,
            BodyBuf::Mapped { pages, len } => &pages[..*len],
        }
    }

    /// Appends `data`; the caller has checked that the body stays within `max` bytes (and
    /// hyper, that it stays within its declared length). A body that did not declare its
    /// length moves to `max` bytes of mapped pages once it reaches
    /// [`BODY_MAPPED_BYTES_MIN`]: only the pages written to take memory.
    fn push(&mut self, data: &[u8], max: usize) -> io::Result<()> {
        let end = self.len() + data.len();
        assert!(
            end <= max,
            "the caller bounds the body by publish_body_bytes_max"
        );
        if let BodyBuf::Heap(bytes) = self {
            if end > bytes.capacity() && end >= BODY_MAPPED_BYTES_MIN {
                let mut pages = memmap2::MmapMut::map_anon(max)?;
                pages[..bytes.len()].copy_from_slice(bytes);
                *self = BodyBuf::Mapped {
                    len: bytes.len(),
                    pages,
                };
            }
        }
        match self {
            BodyBuf::Heap(bytes) => bytes.extend_from_slice(data),
            BodyBuf::Mapped { pages, len } => {
                assert!(
                    end <= pages.len(),
                    "hyper stops a body at its declared length"
                );
                pages[*len..end].copy_from_slice(data);
                *len = end;
            }
        }
        Ok(())
    }
}

/// Bytes of `api_body_bytes_in_flight_max` one body holds, given back when dropped.
struct Share<'a> {
    plane: &'a Plane,
    bytes: usize,
}

impl Share<'_> {
    /// Holds `bytes` in all, if the bodies in flight leave room for them under `max`.
    fn grow(&mut self, bytes: usize, max: usize) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        let room = self.plane.stats().body_bytes_in_flight + more <= max;
        if room {
            self.plane
                .update(|stats| stats.body_bytes_in_flight += more);
            self.bytes += more;
        }
        room
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let bytes = self.bytes;
        self.plane
            .update(|stats| stats.body_bytes_in_flight -= bytes);
    }
}

/// Reads the body under `publish_body_bytes_max` (413), within `api_body_timeout_ms` (408)
/// and in a share of `api_body_bytes_in_flight_max` (503). A body that declares its length
/// reserves all of it first, into one buffer of that size: hyper's chunks are copied there
/// and freed as they come, so a body costs its length and one read buffer. A refusal leaves
/// the body unread and closes the connection.
async fn read_body(
    core: &IngestCore,
    request: Request<Incoming>,
) -> Result<Body<'_>, HttpResponse> {
    let max = core.config.publish_body_bytes_max;
    let too_large = || {
        closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds publish_body_bytes_max = {max} bytes"),
        ))
    };
    let in_flight_max = core.config.api_body_bytes_in_flight_max;
    let overloaded = || {
        core.api.update(|stats| stats.bodies_refused_total += 1);
        let mut response = closing(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the request bodies being read hold api_body_bytes_in_flight_max = \
                 {in_flight_max} bytes; retry later"
            ),
        ));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        response
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let declared = declared.map(|len| len as usize);
    let mut share = Share {
        plane: &core.api,
        bytes: 0,
    };
    if !share.grow(declared.unwrap_or(0), in_flight_max) {
        return Err(overloaded());
    }
    let no_memory = |err: io::Error| {
        closing(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("no memory for the body: {err}; retry later"),
        ))
    };
    let mut bytes = BodyBuf::new(declared).map_err(no_memory)?;
    let mut body = request.into_body();
    let timeout = Duration::from_millis(core.config.api_body_timeout_ms);
    let read = glommio::timer::timeout(timeout, async {
        while let Some(frame) = body.frame().await {
            let data = match frame.map(hyper::body::Frame::into_data) {
                Ok(Ok(data)) => data,
                Ok(Err(_trailers)) => continue,
                Err(err) => {
                    return Ok(Err(error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("cannot read the body: {err}"),
                    )))
                }
            };
            let len = bytes.len() + data.len();
            if len > max {
                return Ok(Err(too_large()));
            }
            // A body without a declared length (chunked) takes its share as it comes.
            if !share.grow(len, in_flight_max) {
                return Ok(Err(overloaded()));
            }
            if let Err(err) = bytes.push(&data, max) {
                return Ok(Err(no_memory(err)));
            }
        }
        Ok(Ok(()))
    })
    .await;
    match read {
        Ok(Ok(())) => Ok(Body {
            bytes,
            _share: share,
        }),
        Ok(Err(response)) => Err(response),
        Err(_) => {
            core.api.update(|stats| stats.body_timeouts_total += 1);
            Err(closing(error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within api_body_timeout_ms = {}",
                    core.config.api_body_timeout_ms
                ),
            )))
        }
    }
}

/// A publish as the API takes it.
#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    tenant: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    /// Instead of `channel`: every connection of this user, on `$user`.
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<LazyValue<'a>>,
    #[serde(default)]
    priority: Priority,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    messages: Vec<PublishBody<'a>>,
}

#[derive(Serialize)]
struct Published<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    offset: u64,
}

impl<'a> Published<'a> {
    /// The answer for a publish to the channel of full name `full`, or to `user`'s stream.
    fn new(full: &'a str, user: Option<&'a str>, offset: u64) -> Self {
        let (tenant, channel) = channel::split_scope(full);
        Published {
            tenant,
            channel: user.is_none().then_some(channel),
            user,
            offset,
        }
    }
}

/// One publish, checked: its channel's full name (a user's stream's, for a publish to a
/// user), its data and priority, and the user it was for, if any.
struct Checked {
    full: Box<str>,
    data: Box<str>,
    priority: Priority,
    user: Option<Box<str>>,
}

/// A request refused before sequencing: status, code, message.
type Refusal = (StatusCode, &'static str, String);

fn first_line(err: &sonic_rs::Error) -> String {
    err.to_string().lines().next().unwrap_or("").to_owned()
}

/// Parses a UTF-8 body nested at most `depth_max` levels (`json_depth_max`; its outermost `{`
/// is level 1): deeper is refused before sonic-rs, which recurses once per level, reads it.
/// UTF-8 is checked first as well: sonic-rs's `from_slice` reports invalid UTF-8 only after
/// the whole parse, and hands a `LazyValue` its raw text as a `str` before that, unchecked
/// (a debug build panics there, on the ingest core).
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8], depth_max: usize) -> Result<T, Refusal> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, "bad_request", message);
    let text = std::str::from_utf8(body).map_err(|err| {
        bad(format!(
            "invalid JSON body: not UTF-8 (at byte {})",
            err.valid_up_to()
        ))
    })?;
    if let Err(err) = crate::json::check(body, depth_max) {
        return Err(bad(format!("invalid JSON body: {err}")));
    }
    sonic_rs::from_str(text).map_err(|err| bad(format!("invalid JSON body: {}", first_line(&err))))
}

/// Parses a `POST /v1/publish` body (`batch`: a `/v1/publish/batch` body) as those routes do,
/// before anything it names is checked: each message's raw `data` (`None` where it has
/// none), or the 400's message. The routes' parse without an ingest core, for the tests that
/// replay hostile bodies.
pub fn parse_body(
    body: &[u8],
    batch: bool,
    depth_max: usize,
) -> Result<Vec<Option<Box<str>>>, String> {
    let data = |message: PublishBody<'_>| message.data.map(|data| data.as_raw_str().into());
    let parsed = match batch {
        false => parse_json::<PublishBody>(body, depth_max).map(|body| vec![data(body)]),
        true => parse_json::<BatchBody>(body, depth_max)
            .map(|batch| batch.messages.into_iter().map(data).collect()),
    };
    parsed.map_err(|(_, _, message)| message)
}

/// Checks one publish and takes what the sequencer needs: the channel's full name, the data,
/// the priority.
fn check(core: &IngestCore, caller: &Caller, body: PublishBody<'_>) -> Result<Checked, Refusal> {
    let missing = |field: &str| {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("missing field `{field}`"),
        )
    };
    let data = body.data.ok_or_else(|| missing("data"))?;
    let tenant = tenant_of(caller, body.tenant.as_deref())?;
    let name = match (body.channel, body.user) {
        (Some(_), Some(_)) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "bad_request",
                "a publish names `channel` or `user`, not both".into(),
            ))
        }
        (None, None) => return Err(missing("channel")),
        (None, Some(user)) => {
            check_user(&user)?;
            return Ok(Checked {
                full: channel::user_stream(tenant.as_deref(), &user).into(),
                data: data.as_raw_str().into(),
                priority: body.priority,
                user: Some(user.into()),
            });
        }
        (Some(name), None) => name,
    };
    check_name(core, &name, "")?;
    if channel::is_user_stream(&name) {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            "$user is each connection's own stream: publish to a user with `user`".into(),
        ));
    }
    if channel::is_system(&name) {
        return Err((
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{name:?} is a server channel: only corecast publishes under $sys"),
        ));
    }
    let full = match tenant {
        Some(tenant) => channel::scoped(&tenant, &name).into(),
        None => name.into(),
    };
    Ok(Checked {
        full,
        data: data.as_raw_str().into(),
        priority: body.priority,
        user: None,
    })
}

/// Checks a user id from a request: 400 `invalid_user`.
fn check_user(user: &str) -> Result<(), Refusal> {
    channel::validate_user(user).map_err(|why| (StatusCode::BAD_REQUEST, "invalid_user", why))
}

fn publish_failure(core: &IngestCore, err: PublishError) -> HttpResponse {
    let message = err.message(&core.config);
    refusal(err, message)
}

/// The answer to a refused publish or batch; an overloaded server says when to retry.
fn refusal(err: PublishError, message: String) -> HttpResponse {
    let mut response = error(err.status(), err.code(), message);
    if matches!(err, PublishError::Overloaded | PublishError::Backlogged) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

async fn outcome(
    result: oneshot::Receiver<Result<u64, PublishError>>,
) -> Result<u64, PublishError> {
    result.await.unwrap_or(Err(PublishError::Stopping))
}

async fn publish(core: &IngestCore, body: &[u8], caller: &Caller) -> HttpResponse {
    let checked = parse_json::<PublishBody>(body, core.config.json_depth_max)
        .and_then(|body| check(core, caller, body));
    let Checked {
        full,
        data,
        priority,
        user,
    } = match checked {
        Ok(checked) => checked,
        Err((status, code, message)) => return error(status, code, message),
    };
    let result = core.publish(full.clone(), data, priority);
    match outcome(result).await {
        Ok(offset) => json(
            StatusCode::OK,
            &Published::new(&full, user.as_deref(), offset),
        ),
        Err(err) => publish_failure(core, err),
    }
}

async fn publish_batch(core: &IngestCore, body: &[u8], caller: &Caller) -> HttpResponse {
    let batch = match parse_json::<BatchBody>(body, core.config.json_depth_max) {
        Ok(batch) => batch,
        Err((status, code, message)) => return error(status, code, message),
    };
    let max = core.config.publish_batch_max;
    if batch.messages.len() > max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "the batch has {} messages; publish_batch_max is {max}",
                batch.messages.len()
            ),
        );
    }
    let mut checked = Vec::with_capacity(batch.messages.len());
    for (at, message) in batch.messages.into_iter().enumerate() {
        match check(core, caller, message) {
            Ok(message) => checked.push(message),
            Err((status, code, message)) => {
                return error(status, code, format!("messages[{at}]: {message}"))
            }
        }
    }
    // All or nothing: refused whole before any message is numbered (see `publish_batch`).
    let (names, checked): (Vec<_>, Vec<_>) = checked
        .into_iter()
        .map(|checked| {
            let target = (checked.full.clone(), checked.user);
            (target, (checked.full, checked.data, checked.priority))
        })
        .unzip();
    let Ok(outcome) = core.publish_batch(checked).await else {
        // The sequencer was stopped, perhaps in the middle of the batch.
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            PublishError::Stopping.code(),
            "the server shut down before the batch was answered: part of it may have been \
             published",
        );
    };
    let offsets = match outcome {
        Ok(offsets) => offsets,
        Err(err) => {
            let message = err.batch_message(&core.config);
            return refusal(err, message);
        }
    };
    let results: Vec<Published> = names
        .iter()
        .zip(offsets)
        .map(|((full, user), offset)| Published::new(full, user.as_deref(), offset))
        .collect();
    #[derive(Serialize)]
    struct Results<'a> {
        results: Vec<Published<'a>>,
    }
    json(StatusCode::OK, &Results { results })
}

/// `POST /v1/users/...`: what is done to every connection of one user.
#[derive(Deserialize)]
struct UserActBody<'a> {
    #[serde(borrow)]
    tenant: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    /// `disconnect`'s close reason.
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    /// `subscribe`'s and `unsubscribe`'s pattern.
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
}

/// The close reason of a disconnect without one.
const DISCONNECT_REASON: &str = "disconnected by the server";

/// The longest close reason: what a close frame holds after its code.
const CLOSE_REASON_BYTES_MAX: usize = 123;

/// `POST /v1/users/disconnect`, `/subscribe`, `/unsubscribe` (PROTOCOL.md, "Users"): the act
/// goes to every shard, and in cluster mode to every node, for each connection of the user
/// there. Answered once handed over, not once done: a user with no connection is no error.
async fn user_act(core: &IngestCore, path: &str, body: &[u8], caller: &Caller) -> HttpResponse {
    let checked = parse_json::<UserActBody>(body, core.config.json_depth_max)
        .and_then(|body| check_user_act(core, path, caller, body));
    let (stream, act, answer) = match checked {
        Ok(checked) => checked,
        Err((status, code, message)) => return error(status, code, message),
    };
    match core.act_on_user(stream, act).await {
        Ok(()) => json(StatusCode::OK, &answer),
        Err(err) => publish_failure(core, err),
    }
}

/// The answer to a user act: who, and for `subscribe`/`unsubscribe`, the pattern.
#[derive(Serialize)]
struct UserActed {
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<Box<str>>,
    user: Box<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<Box<str>>,
}

/// Checks a user act: the user's stream, the act, and the answer to send once it is out.
fn check_user_act(
    core: &IngestCore,
    path: &str,
    caller: &Caller,
    body: UserActBody<'_>,
) -> Result<(Arc<str>, UserAct, UserActed), Refusal> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, "bad_request", message);
    let user = body
        .user
        .ok_or_else(|| bad("missing field `user`".into()))?;
    check_user(&user)?;
    let tenant = tenant_of(caller, body.tenant.as_deref())?;
    let stream = channel::user_stream(tenant.as_deref(), &user).into();
    let mut answer = UserActed {
        tenant: tenant.clone(),
        user: user.into(),
        channel: None,
    };
    if path == "/v1/users/disconnect" {
        let reason = body.reason.as_deref().unwrap_or(DISCONNECT_REASON);
        if reason.len() > CLOSE_REASON_BYTES_MAX {
            return Err(bad(format!(
                "`reason` is {} bytes; a close frame holds {CLOSE_REASON_BYTES_MAX}",
                reason.len()
            )));
        }
        return Ok((stream, UserAct::Disconnect(reason.into()), answer));
    }
    let pattern = body
        .channel
        .ok_or_else(|| bad("missing field `channel`".into()))?;
    let shown: String = pattern.chars().take(64).collect();
    channel::check_length(&pattern, core.config.channel_bytes_max)
        .and_then(|()| channel::validate_pattern(&pattern))
        .map_err(|err| {
            (
                StatusCode::BAD_REQUEST,
                "invalid_channel",
                format!("invalid channel {shown:?}: {err}"),
            )
        })?;
    if channel::is_user_stream(&pattern) || (tenant.is_some() && channel::is_system(&pattern)) {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            format!("{shown:?} is not a channel the server subscribes connections to"),
        ));
    }
    let act = if path == "/v1/users/subscribe" {
        UserAct::Subscribe(pattern.as_ref().into())
    } else {
        UserAct::Unsubscribe(pattern.as_ref().into())
    };
    answer.channel = Some(pattern.into());
    Ok((stream, act, answer))
}

/// The reports of every shard that answered within the query timeout, in shard order.
pub(super) async fn shard_reports(core: &IngestCore) -> Vec<ShardReport> {
    let answers = core.query(QueryKind::Stats).await;
    answers
        .into_iter()
        .filter_map(|(_, answer)| match answer {
            Answer::Stats(report) => Some(*report),
            Answer::Channels(_)
            | Answer::StoppedAccepting
            | Answer::Presence(_)
            | Answer::PresenceAll(_) => None,
        })
        .collect()
}

/// One namespace's counters summed over the shards.
#[derive(Debug, Serialize)]
pub(super) struct NamespaceSummary {
    /// The namespace's pattern, or `default` for channels no namespace names.
    pub namespace: String,
    #[serde(flatten)]
    pub stats: NamespaceStats,
}

/// Sums the shards' per-namespace counters, in config order, `default` first.
pub(super) fn namespace_summaries(
    core: &IngestCore,
    reports: &[ShardReport],
) -> Vec<NamespaceSummary> {
    let names = std::iter::once("default".to_owned()).chain(
        core.config
            .namespaces
            .iter()
            .map(|namespace| namespace.pattern.clone()),
    );
    names
        .enumerate()
        .map(|(index, namespace)| {
            let mut stats = NamespaceStats::default();
            for report in reports {
                if let Some(shard) = report.namespaces.get(index) {
                    stats.deliveries += shard.deliveries;
                    stats.drops += shard.drops;
                    stats.conflated += shard.conflated;
                    stats.slow_consumer_closes += shard.slow_consumer_closes;
                }
            }
            NamespaceSummary { namespace, stats }
        })
        .collect()
}

/// One channel's acknowledgements over every shard: how far its slowest and fastest
/// acknowledging subscribers are.
#[derive(Serialize)]
struct AckSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<Box<str>>,
    channel: Box<str>,
    /// Connections that acked this channel.
    conns: usize,
    offset_min: u64,
    offset_max: u64,
    /// The channel's latest offset: `offset_latest - offset_min` is the worst ack lag.
    offset_latest: u64,
}

/// Merges the shards' ack rows per channel, most lagging first.
fn ack_summaries(core: &IngestCore, rows: Vec<AckRow>) -> Vec<AckSummary> {
    let mut merged: hashbrown::HashMap<Box<str>, AckRow> = hashbrown::HashMap::new();
    for row in rows {
        match merged.get_mut(&row.channel) {
            Some(into) => {
                into.conns += row.conns;
                into.offset_min = into.offset_min.min(row.offset_min);
                into.offset_max = into.offset_max.max(row.offset_max);
            }
            None => {
                merged.insert(row.channel.clone(), row);
            }
        }
    }
    let mut summaries: Vec<AckSummary> = merged
        .into_values()
        .map(|row| AckSummary {
            offset_latest: core.channel_offset(&row.channel),
            tenant: channel::split_scope(&row.channel).0.map(Box::from),
            channel: channel::visible(&row.channel).into(),
            conns: row.conns,
            offset_min: row.offset_min,
            offset_max: row.offset_max,
        })
        .collect();
    summaries.sort_by(|a, b| {
        let lag = |s: &AckSummary| s.offset_latest.saturating_sub(s.offset_min);
        lag(b)
            .cmp(&lag(a))
            .then_with(|| (&a.tenant, &a.channel).cmp(&(&b.tenant, &b.channel)))
    });
    summaries
}

async fn stats(core: &IngestCore) -> HttpResponse {
    let mut reports = shard_reports(core).await;
    let namespaces = namespace_summaries(core, &reports);
    let acks = reports
        .iter_mut()
        .flat_map(|report| std::mem::take(&mut report.acks))
        .collect();
    let shards: Vec<_> = reports.iter().map(|report| report.stats).collect();
    #[derive(Serialize)]
    struct Stats<'a> {
        shards: &'a [crate::msg::ShardStats],
        shards_answered: usize,
        connections: usize,
        epoch: &'a str,
        ingest: super::IngestStats,
        fanout_latency_us: crate::latency::LatencySummary,
        namespaces: Vec<NamespaceSummary>,
        acks: Vec<AckSummary>,
        tenants: Vec<TenantSummary>,
        api: ApiStats,
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster: Option<super::cluster::ClusterStats>,
    }
    #[derive(Serialize)]
    struct TenantSummary {
        tenant: Box<str>,
        connections: usize,
    }
    json(
        StatusCode::OK,
        &Stats {
            shards: &shards,
            shards_answered: shards.len(),
            connections: shards.iter().map(|shard| shard.connections).sum(),
            epoch: &core.epoch(),
            ingest: core.stats(),
            fanout_latency_us: core.fanout_summary(),
            namespaces,
            acks: ack_summaries(core, acks),
            tenants: core
                .tenant_connections()
                .into_iter()
                .map(|(tenant, connections)| TenantSummary {
                    tenant,
                    connections,
                })
                .collect(),
            api: core.api.stats(),
            cluster: core.cluster_stats(),
        },
    )
}

/// `GET /v1/history?channel=X&since=N&limit=K[&tenant=T]`: one page of a channel's history.
fn history(core: &IngestCore, query: &str, caller: &Caller) -> HttpResponse {
    let mut channel = None;
    let mut tenant = None;
    let max = core.config.recovery_messages_max;
    let (mut since, mut limit) = (0u64, HISTORY_PAGE_DEFAULT.min(max));
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let bad = |message: String| error(StatusCode::BAD_REQUEST, "bad_request", message);
        match &*key {
            "channel" => channel = Some(value.into_owned()),
            "tenant" => tenant = Some(value.into_owned()),
            "since" => match value.parse() {
                Ok(value) => since = value,
                Err(_) => return bad(format!("since={value:?} is not a non-negative integer")),
            },
            "limit" => match value.parse() {
                Ok(value) if (1..=max).contains(&value) => limit = value,
                _ => {
                    return bad(format!(
                        "limit={value:?} is not an integer from 1 to {max} (recovery_messages_max)"
                    ))
                }
            },
            other => {
                let shown: String = other.chars().take(32).collect();
                return bad(format!(
                    "unknown parameter {shown:?}: take channel, since, limit, tenant"
                ));
            }
        }
    }
    let (name, full) = match query_channel(core, caller, channel, tenant, "history") {
        Ok(named) => named,
        Err((status, code, message)) => return error(status, code, message),
    };
    let page = core.history_page(&full, since, limit);
    // The messages are the stored frames' JSON, spliced in as they are: no re-encoding.
    let mut body = Vec::with_capacity(128 + page.messages.iter().map(Bytes::len).sum::<usize>());
    body.push(b'{');
    if let Some(tenant) = channel::split_scope(&full).0 {
        body.extend_from_slice(br#""tenant":"#);
        sonic_rs::to_writer(&mut body, tenant).expect("writing to a Vec cannot fail");
        body.push(b',');
    }
    body.extend_from_slice(br#""channel":"#);
    sonic_rs::to_writer(&mut body, &name).expect("writing to a Vec cannot fail");
    body.extend_from_slice(br#","epoch":"#);
    sonic_rs::to_writer(&mut body, &*core.epoch()).expect("writing to a Vec cannot fail");
    body.extend_from_slice(
        format!(
            r#","offset":{},"complete":{},"messages":["#,
            page.offset, page.complete
        )
        .as_bytes(),
    );
    for (at, message) in page.messages.iter().enumerate() {
        if at > 0 {
            body.push(b',');
        }
        body.extend_from_slice(message);
    }
    body.extend_from_slice(b"]}");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}

/// `GET /v1/presence?channel=X[&members=false][&tenant=T]`: who is subscribed to one channel
/// of a presence namespace, over every shard (and node); see [`super::presence`].
async fn presence(core: &IngestCore, query: &str, caller: &Caller) -> HttpResponse {
    let mut channel = None;
    let mut tenant = None;
    let mut members = true;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let bad = |message: String| error(StatusCode::BAD_REQUEST, "bad_request", message);
        match &*key {
            "channel" => channel = Some(value.into_owned()),
            "tenant" => tenant = Some(value.into_owned()),
            "members" => match &*value {
                "true" => members = true,
                "false" => members = false,
                _ => return bad(format!("members={value:?} is neither true nor false")),
            },
            other => {
                let shown: String = other.chars().take(32).collect();
                return bad(format!(
                    "unknown parameter {shown:?}: take channel, members, tenant"
                ));
            }
        }
    }
    let (name, full) = match query_channel(core, caller, channel, tenant, "presence") {
        Ok(named) => named,
        Err((status, code, message)) => return error(status, code, message),
    };
    if channel::is_user_stream(&name)
        || core.config.presence_of(&full) == crate::config::PresenceMode::Off
    {
        return error(
            StatusCode::BAD_REQUEST,
            "presence_disabled",
            format!("{name:?} is in no namespace with presence = true"),
        );
    }
    let totals = core.presence(full.as_str().into()).await;
    let view = crate::ws::command::PresenceView {
        channel: &full,
        connections: totals.connections,
        users: totals.users.len(),
        members: members.then_some(&totals.members[..]),
        truncated: members && totals.truncated,
    };
    let mut body = Vec::with_capacity(128 + 64 * totals.members.len());
    crate::ws::command::presence_json(None, channel::split_scope(&full).0, &view, &mut body);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}

/// The dashboard page, with the WebSocket port it connects to filled in.
fn dashboard(core: &IngestCore) -> HttpResponse {
    let page = DASHBOARD
        .replace("WS_PORT", &core.config.listen.port().to_string())
        .replace(
            "SYS_STATS_CHANNEL",
            &super::sys_stats::channel(&core.config),
        );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(page)))
        .expect("a static response is valid")
}

/// `GET /dashboard`: one self-contained page (no CDN) drawing `$sys.stats`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Messages a `/v1/history` page holds when `limit` is not given.
const HISTORY_PAGE_DEFAULT: usize = 100;

/// `GET /metrics`: the same figures as `/v1/stats`, in the OpenMetrics text format.
async fn prometheus(core: &IngestCore) -> HttpResponse {
    let reports = shard_reports(core).await;
    let snapshot = Snapshot {
        namespaces: namespace_summaries(core, &reports)
            .into_iter()
            .map(|summary| (summary.namespace, summary.stats))
            .collect(),
        shards: reports.iter().map(|report| report.stats).collect(),
        tenants: core.tenant_connections(),
        ingest: core.stats(),
        api: core.api.stats(),
        fanout: core.fanout_buckets(),
        cluster: core.cluster_stats(),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, metrics::CONTENT_TYPE)
        .body(Full::new(Bytes::from(metrics::exposition(snapshot))))
        .expect("a static response is valid")
}

async fn channels(core: &IngestCore) -> HttpResponse {
    let mut totals: hashbrown::HashMap<Box<str>, usize> = hashbrown::HashMap::new();
    for (_, answer) in core.query(QueryKind::Channels).await {
        if let Answer::Channels(patterns) = answer {
            // Users' streams are left out: one per user would bury the channels, and
            // `/v1/stats` counts users.
            let channels = patterns
                .into_iter()
                .filter(|(pattern, _)| !channel::is_user_stream(channel::split_scope(pattern).1));
            for (pattern, count) in channels {
                *totals.entry(pattern).or_default() += count;
            }
        }
    }
    let mut channels: Vec<_> = totals.into_iter().collect();
    channels.sort();
    #[derive(Serialize)]
    struct Channel<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        tenant: Option<&'a str>,
        channel: &'a str,
        subscribers: usize,
    }
    let channels: Vec<Channel> = channels
        .iter()
        .map(|(full, subscribers)| {
            let (tenant, channel) = channel::split_scope(full);
            Channel {
                tenant,
                channel,
                subscribers: *subscribers,
            }
        })
        .collect();
    #[derive(Serialize)]
    struct Channels<'a> {
        channels: Vec<Channel<'a>>,
    }
    json(StatusCode::OK, &Channels { channels })
}
