//! The control-plane HTTP API, served by hyper on the ingest core's glommio executor.
//!
//! Routes: `POST /v1/publish`, `POST /v1/publish/batch`, `GET /healthz`, `GET /v1/stats`,
//! `GET /v1/channels`, and `GET /metrics` (Prometheus; see [`super::metrics`]). Bodies are read under `publish_body_bytes_max` and validated with sonic-rs
//! before anything is queued, so a bad request never reaches the sequencer. Every error is a
//! JSON body `{"error":{"code":..,"message":..}}` with the contract's status.

use std::borrow::Cow;
use std::convert::Infallible;
use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use sonic_rs::LazyValue;

use super::metrics::{self, Snapshot};
use super::{IngestCore, Priority, PublishError};
use crate::channel;
use crate::net::handshake::ErrorBody;
use crate::queue::{Answer, QueryKind};

type HttpResponse = Response<Full<Bytes>>;

/// Accepts control-plane connections until the task is cancelled.
pub async fn serve(core: Rc<IngestCore>, listener: glommio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                }
                glommio::spawn_local(serve_connection(core.clone(), stream)).detach();
            }
            Err(err) => {
                tracing::warn!(error = %err, "control-plane accept failed; retrying");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(core: Rc<IngestCore>, stream: glommio::net::TcpStream) {
    let io = smol_hyper::rt::FuturesIo::new(stream);
    let service = hyper::service::service_fn(move |request| {
        let core = core.clone();
        async move { Ok::<_, Infallible>(route(&core, request).await) }
    });
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(error = %err, "control-plane connection ended with an error");
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

async fn route(core: &IngestCore, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let allowed = match path.as_str() {
        "/v1/publish" | "/v1/publish/batch" => Method::POST,
        "/healthz" | "/v1/stats" | "/v1/channels" | "/metrics" => Method::GET,
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
    match path.as_str() {
        "/healthz" if core.is_stopping() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &sonic_rs::json!({"status": "stopping"}),
        ),
        "/healthz" => json(StatusCode::OK, &sonic_rs::json!({"status": "ok"})),
        "/v1/stats" => stats(core).await,
        "/metrics" => prometheus(core).await,
        "/v1/channels" => channels(core).await,
        "/v1/publish" => match read_body(core, request).await {
            Ok(body) => publish(core, &body).await,
            Err(response) => response,
        },
        _ => match read_body(core, request).await {
            Ok(body) => publish_batch(core, &body).await,
            Err(response) => response,
        },
    }
}

/// Reads the body under `publish_body_bytes_max`.
async fn read_body(core: &IngestCore, request: Request<Incoming>) -> Result<Bytes, HttpResponse> {
    let max = core.config.publish_body_bytes_max;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds publish_body_bytes_max = {max} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(err) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("cannot read the body: {err}"),
        )),
    }
}

/// A publish as the API takes it.
#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
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
    channel: &'a str,
    offset: u64,
}

/// A request refused before sequencing: status, code, message.
type Refusal = (StatusCode, &'static str, String);

fn first_line(err: &sonic_rs::Error) -> String {
    err.to_string().lines().next().unwrap_or("").to_owned()
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refusal> {
    sonic_rs::from_slice(body).map_err(|err| {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON body: {}", first_line(&err)),
        )
    })
}

/// Checks one publish and takes what the sequencer needs.
fn check(body: PublishBody<'_>) -> Result<(Box<str>, Box<str>, Priority), Refusal> {
    let missing = |field: &str| {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("missing field `{field}`"),
        )
    };
    let name = body.channel.ok_or_else(|| missing("channel"))?;
    let data = body.data.ok_or_else(|| missing("data"))?;
    if let Err(err) = channel::validate_channel(&name) {
        let shown: String = name.chars().take(64).collect();
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            format!("invalid channel {shown:?}: {err}"),
        ));
    }
    Ok((name.into(), data.as_raw_str().into(), body.priority))
}

fn publish_failure(core: &IngestCore, err: PublishError) -> HttpResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        err.code(),
        err.message(core.config.channels_max),
    )
}

async fn outcome(
    result: oneshot::Receiver<Result<u64, PublishError>>,
) -> Result<u64, PublishError> {
    result.await.unwrap_or(Err(PublishError::Stopping))
}

async fn publish(core: &IngestCore, body: &[u8]) -> HttpResponse {
    let checked = parse_json::<PublishBody>(body).and_then(check);
    let (name, data, priority) = match checked {
        Ok(checked) => checked,
        Err((status, code, message)) => return error(status, code, message),
    };
    let result = core.publish(name.clone(), data, priority);
    match outcome(result).await {
        Ok(offset) => json(
            StatusCode::OK,
            &Published {
                channel: &name,
                offset,
            },
        ),
        Err(err) => publish_failure(core, err),
    }
}

async fn publish_batch(core: &IngestCore, body: &[u8]) -> HttpResponse {
    let batch = match parse_json::<BatchBody>(body) {
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
        match check(message) {
            Ok(message) => checked.push(message),
            Err((status, code, message)) => {
                return error(status, code, format!("messages[{at}]: {message}"))
            }
        }
    }
    let pending: Vec<_> = checked
        .into_iter()
        .map(|(name, data, priority)| (name.clone(), core.publish(name, data, priority)))
        .collect();
    let mut results = Vec::with_capacity(pending.len());
    for (name, result) in pending {
        match outcome(result).await {
            Ok(offset) => results.push((name, offset)),
            Err(err) => return publish_failure(core, err),
        }
    }
    let results: Vec<Published> = results
        .iter()
        .map(|(name, offset)| Published {
            channel: name,
            offset: *offset,
        })
        .collect();
    #[derive(Serialize)]
    struct Results<'a> {
        results: Vec<Published<'a>>,
    }
    json(StatusCode::OK, &Results { results })
}

/// Every shard's counters that answered within the query timeout, in shard order.
async fn shard_stats(core: &IngestCore) -> Vec<crate::shard::ShardStats> {
    let answers = core.query(QueryKind::Stats).await;
    answers
        .into_iter()
        .filter_map(|(_, answer)| match answer {
            Answer::Stats(stats) => Some(stats),
            Answer::Channels(_) => None,
        })
        .collect()
}

async fn stats(core: &IngestCore) -> HttpResponse {
    let shards = shard_stats(core).await;
    #[derive(Serialize)]
    struct Stats<'a> {
        shards: &'a [crate::shard::ShardStats],
        shards_answered: usize,
        connections: usize,
        ingest: super::IngestStats,
        fanout_latency_us: metrics::LatencySummary,
    }
    json(
        StatusCode::OK,
        &Stats {
            shards: &shards,
            shards_answered: shards.len(),
            connections: shards.iter().map(|shard| shard.connections).sum(),
            ingest: core.stats(),
            fanout_latency_us: core.fanout_summary(),
        },
    )
}

/// `GET /metrics`: the same figures as `/v1/stats`, in the OpenMetrics text format.
async fn prometheus(core: &IngestCore) -> HttpResponse {
    let snapshot = Snapshot {
        shards: shard_stats(core).await,
        ingest: core.stats(),
        fanout: core.fanout_buckets(),
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
            for (pattern, count) in patterns {
                *totals.entry(pattern).or_default() += count;
            }
        }
    }
    let mut channels: Vec<_> = totals.into_iter().collect();
    channels.sort();
    #[derive(Serialize)]
    struct Channel<'a> {
        channel: &'a str,
        subscribers: usize,
    }
    let channels: Vec<Channel> = channels
        .iter()
        .map(|(channel, subscribers)| Channel {
            channel,
            subscribers: *subscribers,
        })
        .collect();
    #[derive(Serialize)]
    struct Channels<'a> {
        channels: Vec<Channel<'a>>,
    }
    json(StatusCode::OK, &Channels { channels })
}
