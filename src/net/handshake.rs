//! The HTTP upgrade on the WebSocket port, as a pure function over the request bytes.
//!
//! httparse reads the request; tungstenite's `create_response` checks the RFC 6455 headers and
//! derives the accept key. This module decides what the contract answers (101, or 400, 404, 405,
//! 426, 431 with a JSON body; 200 with the browser client for `GET /client.js` and
//! `GET /client.d.ts`), reads the `channels` query, routes the configured `echo_path` to the echo
//! endpoint, and negotiates permessage-deflate ([`crate::ws::deflate`]). It never touches a
//! socket: the caller feeds it what has arrived so far and gets `Ok(None)` until the request is
//! complete.

use http::StatusCode;
use serde::Serialize;

use crate::channel;
use crate::web::{self, Asset};
use crate::ws::deflate::{self, Deflate};

/// Headers an upgrade request may carry; more gets 431.
const HEADERS_MAX: usize = 64;

/// The contract's HTTP error body, `{"error":{"code":..,"message":..}}`, on both ports.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl<'a> ErrorBody<'a> {
    pub fn new(code: &'a str, message: &'a str) -> Self {
        ErrorBody {
            error: ErrorDetail { code, message },
        }
    }
}

/// Limits the handshake enforces, and what it may agree to.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// Largest request (line and headers) in bytes.
    pub request_bytes_max: usize,
    /// Most channels `?channels=` may name.
    pub channels_max: usize,
    /// The echo endpoint's path (`echo_path`), if it is enabled.
    pub echo_path: Option<&'a str>,
    /// Whether permessage-deflate may be negotiated (`permessage_deflate`).
    pub deflate: bool,
    /// Longest pattern `?channels=` may name (`channel_bytes_max`).
    pub channel_bytes_max: usize,
    /// `Origin`s an upgrade may come from (`allowed_origins`); empty: any.
    pub allowed_origins: &'a [String],
}

/// A valid upgrade: the response to send and what the request asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The complete `101 Switching Protocols` response.
    pub response: Vec<u8>,
    /// Patterns from `?channels=a,b`, validated.
    pub channels: Vec<String>,
    /// The JWT from `?token=` or `Authorization: Bearer` (checked by the caller).
    pub token: Option<String>,
    /// The user from `?user=` (validated), which only `auth = "none"` trusts.
    pub user: Option<String>,
    /// Bytes of the buffer the request used; any after it are the client's first frames.
    pub request_bytes: usize,
    /// The request was for the echo endpoint: no greeting, no commands, every message sent back.
    pub echo: bool,
    /// permessage-deflate, when the client offered it and the server agreed.
    pub deflate: Option<Deflate>,
}

/// What a complete request on the WebSocket port asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade: send its response and serve the connection.
    Upgrade(Upgrade),
    /// A plain `GET` of one of the browser client's files: send [`asset_response`] and close.
    Asset(Asset),
}

/// The complete `200 OK` response carrying `asset`, closing the connection. Any origin may load
/// it (`Access-Control-Allow-Origin: *`): the client is public code that pages of other origins
/// import as a module, which the browser fetches with CORS.
pub fn asset_response(asset: Asset) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
        asset.content_type,
        asset.body.len(),
    );
    let mut response = Vec::with_capacity(head.len() + asset.body.len());
    response.extend_from_slice(head.as_bytes());
    response.extend_from_slice(asset.body);
    response
}

/// A refused request: the status and the JSON error the response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Reject {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Reject {
            status,
            code,
            message: message.into(),
        }
    }

    /// The complete HTTP response, closing the connection.
    pub fn response(&self) -> Vec<u8> {
        let body = sonic_rs::to_string(&ErrorBody::new(self.code, &self.message))
            .expect("an error body serializes");
        let extra = match self.status {
            StatusCode::UPGRADE_REQUIRED => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\
             {extra}Connection: close\r\n\r\n{body}",
            status = self.status,
            len = body.len(),
        )
        .into_bytes()
    }
}

/// Reads an upgrade request, or a `GET` of a browser client file, from the start of `buf`.
/// `Ok(None)`: incomplete, read more. `Err`: answer with [`Reject::response`] and close.
pub fn parse_request(buf: &[u8], limits: Limits) -> Result<Option<Request>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let request_bytes = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= limits.request_bytes_max => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.request_bytes_max => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "the upgrade request exceeds {} bytes or {HEADERS_MAX} headers",
                    limits.request_bytes_max
                ),
            ))
        }
        Err(err) => {
            return Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("malformed HTTP request: {err}"),
            ))
        }
    };
    let target = request.path.expect("a complete request has a path");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(asset) = web::asset(path) {
        if request.method != Some("GET") {
            return Err(Reject::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} is served to GET only"),
            ));
        }
        return Ok(Some(Request::Asset(asset)));
    }
    let echo = limits.echo_path == Some(path);
    if !echo && path != "/ws" && path != "/" {
        return Err(Reject::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no WebSocket endpoint at {path:?}; use /ws"),
        ));
    }
    let method = request.method.expect("a complete request has a method");
    if method != "GET" {
        return Err(Reject::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the WebSocket endpoint takes GET with an upgrade",
        ));
    }
    let wants_websocket = request.headers.iter().any(|header| {
        header.name.eq_ignore_ascii_case("upgrade")
            && std::str::from_utf8(header.value)
                .is_ok_and(|value| value.trim().eq_ignore_ascii_case("websocket"))
    });
    if !wants_websocket {
        return Err(Reject::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this port speaks WebSocket only: send an RFC 6455 upgrade",
        ));
    }
    let origin = request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("origin"))
        .map(|header| String::from_utf8_lossy(header.value));
    if let Some(origin) = origin {
        if !origin_allowed(&origin, limits.allowed_origins) {
            let shown: String = origin.chars().take(128).collect();
            return Err(Reject::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("Origin {shown:?} is not one of this server's allowed_origins"),
            ));
        }
    }
    let deflate = limits
        .deflate
        .then(|| {
            let offers = request
                .headers
                .iter()
                .filter(|header| header.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .filter_map(|header| std::str::from_utf8(header.value).ok());
            deflate::negotiate(offers)
        })
        .flatten();
    let response = accept(&request, deflate)?;
    let channels = if echo {
        Vec::new()
    } else {
        query_channels(query, limits)?
    };
    let token = query_value(query, "token").or_else(|| bearer_token(&request));
    let user = query_value(query, "user");
    if let Some(user) = &user {
        channel::validate_user(user).map_err(|why| {
            Reject::new(
                StatusCode::BAD_REQUEST,
                "invalid_user",
                format!("user=: {why}"),
            )
        })?;
    }
    Ok(Some(Request::Upgrade(Upgrade {
        response,
        channels,
        token,
        user,
        request_bytes,
        echo,
        deflate,
    })))
}

/// Checks the RFC 6455 headers with tungstenite and builds the 101 response, naming the
/// extension agreed on, if any.
fn accept(request: &httparse::Request, deflate: Option<Deflate>) -> Result<Vec<u8>, Reject> {
    let bad = |message: String| Reject::new(StatusCode::BAD_REQUEST, "bad_upgrade", message);
    let mut builder = http::Request::builder()
        .method("GET")
        .uri(request.path.unwrap_or("/"))
        .version(http::Version::HTTP_11);
    for header in request.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    let http_request = builder
        .body(())
        .map_err(|err| bad(format!("invalid request header: {err}")))?;
    if request.version != Some(1) {
        return Err(bad("WebSocket needs HTTP/1.1".into()));
    }
    let version_ok = http_request
        .headers()
        .get("Sec-WebSocket-Version")
        .is_some_and(|value| value == "13");
    if !version_ok {
        return Err(Reject::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_version",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let mut response = tungstenite::handshake::server::create_response(&http_request)
        .map_err(|err| bad(format!("invalid WebSocket upgrade: {err}")))?;
    if let Some(deflate) = deflate {
        let value = http::HeaderValue::from_str(&deflate.response_value())
            .expect("the extension response is ASCII");
        response
            .headers_mut()
            .insert("Sec-WebSocket-Extensions", value);
    }
    let mut out = Vec::with_capacity(160);
    tungstenite::handshake::server::write_response(&mut out, &response)
        .map_err(|err| bad(format!("cannot build the upgrade response: {err}")))?;
    Ok(out)
}

/// The first value of `name=` in a query string, if any.
fn query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The token of an `Authorization: Bearer <token>` header, if any.
fn bearer_token(request: &httparse::Request) -> Option<String> {
    let header = request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("authorization"))?;
    let value = std::str::from_utf8(header.value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Whether a browser at `origin` may connect: any when `allowed` is empty, else an entry
/// equal to it (ASCII case aside) or a `scheme://*.domain` entry it is a subdomain of.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|entry| match entry.split_once("://*.") {
            Some((scheme, domain)) => origin
                .split_once("://")
                .filter(|(asked, _)| asked.eq_ignore_ascii_case(scheme))
                .and_then(|(_, host)| {
                    host.len()
                        .checked_sub(domain.len() + 1)
                        .map(|at| (host, at))
                })
                .is_some_and(|(host, at)| {
                    at > 0
                        && host.as_bytes()[at] == b'.'
                        && host[at + 1..].eq_ignore_ascii_case(domain)
                }),
            None => origin.eq_ignore_ascii_case(entry),
        })
}

/// Reads `channels=a,b` (repeatable) from a query string.
fn query_channels(query: &str, limits: Limits) -> Result<Vec<String>, Reject> {
    let channels_max = limits.channels_max;
    let mut channels = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "channels" {
            continue;
        }
        for pattern in value.split(',').filter(|pattern| !pattern.is_empty()) {
            let valid = channel::check_length(pattern, limits.channel_bytes_max)
                .and_then(|()| channel::validate_pattern(pattern));
            if let Err(err) = valid {
                let shown: String = pattern.chars().take(64).collect();
                return Err(Reject::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_channel",
                    format!("invalid channel {shown:?}: {err}"),
                ));
            }
            if channel::is_user_stream(pattern) && pattern != channel::USER_CHANNEL {
                return Err(Reject::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_channel",
                    "a connection reads only its own user's stream, as $user",
                ));
            }
            if channels.len() == channels_max {
                return Err(Reject::new(
                    StatusCode::BAD_REQUEST,
                    "too_many_subscriptions",
                    format!("channels= names more than {channels_max} channels"),
                ));
            }
            channels.push(pattern.to_owned());
        }
    }
    Ok(channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        request_bytes_max: 4096,
        channels_max: 3,
        echo_path: None,
        deflate: false,
        channel_bytes_max: 255,
        allowed_origins: &[],
    };

    fn request(target: &str, extra: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn origins_match_exactly_or_as_a_subdomain_of_a_wildcard_entry() {
        let allowed = [
            "https://app.example.com".to_owned(),
            "https://*.corp.example".to_owned(),
        ];
        for (origin, ok) in [
            ("https://app.example.com", true),
            ("HTTPS://APP.example.com", true),
            ("http://app.example.com", false),
            ("https://app.example.com:8443", false),
            ("https://a.corp.example", true),
            ("https://a.b.corp.example", true),
            ("https://corp.example", false),
            ("https://evilcorp.example", false),
            ("http://a.corp.example", false),
            ("null", false),
        ] {
            assert_eq!(origin_allowed(origin, &allowed), ok, "{origin}");
        }
        assert!(
            origin_allowed("https://anything", &[]),
            "no list: any origin"
        );
        let limits = Limits {
            allowed_origins: &allowed,
            ..LIMITS
        };
        let refused = parse_request(
            request("/ws", "Origin: https://evil.example\r\n").as_bytes(),
            limits,
        )
        .unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.code, "origin_not_allowed");
        let upgraded = parse_request(
            request("/ws", "Origin: https://app.example.com\r\n").as_bytes(),
            limits,
        );
        assert!(matches!(upgraded, Ok(Some(Request::Upgrade(_)))));
    }

    #[test]
    fn rfc_key_gets_rfc_accept_and_query_channels() {
        let text = request("/ws?channels=leads.*,chat.r1", "");
        let Some(Request::Upgrade(upgrade)) = parse_request(text.as_bytes(), LIMITS).unwrap()
        else {
            panic!("expected an upgrade");
        };
        let response = String::from_utf8(upgrade.response).unwrap();
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        assert!(
            response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{response}"
        );
        assert_eq!(upgrade.channels, ["leads.*", "chat.r1"]);
        assert_eq!(upgrade.request_bytes, text.len());
    }

    #[test]
    fn echo_path_is_an_endpoint_only_when_configured() {
        let text = request("/echo?channels=a", "");
        assert_eq!(
            parse_request(text.as_bytes(), LIMITS).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        let limits = Limits {
            echo_path: Some("/echo"),
            ..LIMITS
        };
        let Some(Request::Upgrade(upgrade)) = parse_request(text.as_bytes(), limits).unwrap()
        else {
            panic!("expected an upgrade");
        };
        assert!(upgrade.echo);
        assert!(
            upgrade.channels.is_empty(),
            "the echo endpoint subscribes to nothing"
        );
        let Some(Request::Upgrade(normal)) =
            parse_request(request("/ws", "").as_bytes(), limits).unwrap()
        else {
            panic!("expected an upgrade");
        };
        assert!(!normal.echo);
    }

    #[test]
    fn permessage_deflate_is_agreed_only_when_enabled_and_offered() {
        let offer = "Sec-WebSocket-Extensions: foo, permessage-deflate; client_max_window_bits\r\n";
        let upgrade = |extra: &str, deflate: bool| {
            let limits = Limits { deflate, ..LIMITS };
            match parse_request(request("/ws", extra).as_bytes(), limits) {
                Ok(Some(Request::Upgrade(upgrade))) => upgrade,
                other => panic!("expected an upgrade, got {other:?}"),
            }
        };
        let agreed = upgrade(offer, true);
        assert_eq!(
            agreed.deflate,
            Some(Deflate {
                server_window_bits: 15
            })
        );
        let response = String::from_utf8(agreed.response).unwrap();
        assert!(
            response.contains(
                "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover\r\n"
            ),
            "{response}"
        );
        for (extra, deflate) in [(offer, false), ("", true)] {
            let plain = upgrade(extra, deflate);
            assert_eq!(plain.deflate, None);
            let response = String::from_utf8(plain.response).unwrap();
            assert!(
                !response.to_ascii_lowercase().contains("extensions"),
                "{response}"
            );
        }
    }

    #[test]
    fn partial_request_asks_for_more() {
        let text = request("/ws", "");
        assert_eq!(parse_request(&text.as_bytes()[..20], LIMITS), Ok(None));
    }

    #[test]
    fn refusals_carry_the_contract_status() {
        let status = |text: &str| parse_request(text.as_bytes(), LIMITS).unwrap_err().status;
        assert_eq!(status(&request("/nope", "")), StatusCode::NOT_FOUND);
        assert_eq!(
            status("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(
            status("GARBAGE\x01 / HTTP/1.1\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&request("/ws?channels=a..b", "")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&request("/ws?channels=a,b,c,d", "")),
            StatusCode::BAD_REQUEST
        );
        let big = format!("X-Pad: {}\r\n", "p".repeat(5000));
        assert_eq!(
            status(&request("/ws", &big)),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let bad_key = request("/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(status(&bad_key), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn get_of_a_client_file_is_its_asset_with_or_without_upgrade_headers() {
        let plain = "GET /client.js?v=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let script = web::asset("/client.js").unwrap();
        assert_eq!(
            parse_request(plain.as_bytes(), LIMITS),
            Ok(Some(Request::Asset(script)))
        );
        assert_eq!(
            parse_request(request("/client.d.ts", "").as_bytes(), LIMITS),
            Ok(Some(Request::Asset(web::asset("/client.d.ts").unwrap())))
        );
        let post = "POST /client.js HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(post.as_bytes(), LIMITS).unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let partial = "GET /client.js HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(parse_request(partial.as_bytes(), LIMITS), Ok(None));
    }

    #[test]
    fn asset_response_is_complete_http_with_the_body() {
        let asset = Asset {
            content_type: "text/javascript; charset=utf-8",
            body: b"export {};",
        };
        let text = String::from_utf8(asset_response(asset)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/javascript; charset=utf-8\r\n\
             Content-Length: 10\r\nCache-Control: no-cache\r\n\
             Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\nexport {};"
        );
    }

    #[test]
    fn reject_response_is_complete_http_with_json() {
        let reject = Reject::new(StatusCode::NOT_FOUND, "not_found", "no");
        let text = String::from_utf8(reject.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(
            text.ends_with(r#"{"error":{"code":"not_found","message":"no"}}"#),
            "{text}"
        );
    }
}
