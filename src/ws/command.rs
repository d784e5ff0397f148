//! Client commands in, server replies out: the JSON of the wire contract, section 2.
//!
//! Parsing is a pure function from a text message to a [`Command`] or an [`ErrorReply`] that
//! already carries the contract's error code and a human message; sonic-rs validates every byte
//! (a `data` value is kept as its raw, validated JSON text, never re-encoded). Replies are built
//! here as complete WebSocket frames, so a connection only ever queues `Bytes`. The builders
//! take channels by their full names and write them as the client names them, without a
//! tenant's scope ([`channel::TENANT_MARK`]), so no reply can show a client its scope.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sonic_rs::{JsonValueTrait, LazyValue, Value};

use crate::channel::{self, ChannelError};
use crate::json;
use crate::msg::{Position, Since};
use crate::ws::frame::text_frame_with;

/// Largest `id` a client may attach, as JSON text. Ids are echoed, so this bounds what a
/// client can make the server store and repeat.
pub const ID_BYTES_MAX: usize = 128;

/// A command a client sent, borrowed from its message.
#[derive(Debug)]
pub enum Command<'a> {
    Subscribe {
        channel: Cow<'a, str>,
        /// Where the client was, to recover what it missed since.
        since: Option<Since>,
        id: Option<Value>,
    },
    Unsubscribe {
        channel: Cow<'a, str>,
        id: Option<Value>,
    },
    Ping {
        id: Option<Value>,
    },
    Publish {
        channel: Cow<'a, str>,
        /// The `data` value as raw JSON text, validated.
        data: &'a str,
        id: Option<Value>,
    },
    GetStats {
        id: Option<Value>,
    },
    Ack {
        channel: Cow<'a, str>,
        offset: u64,
        id: Option<Value>,
    },
    /// Who is subscribed to one channel (a presence namespace's, by its exact name).
    Presence {
        channel: Cow<'a, str>,
        id: Option<Value>,
    },
    /// A new token for the connection (auth = "jwt").
    Refresh {
        token: Cow<'a, str>,
        id: Option<Value>,
    },
}

/// The contract's error codes: the protocol's own type.
pub use corecast_proto::ErrorCode;

/// A recoverable error to send back; the connection stays open.
#[derive(Debug)]
pub struct ErrorReply {
    pub id: Option<Value>,
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn invalid_channel(id: Option<Value>, name: &str, err: ChannelError) -> Self {
        let shown: String = name.chars().take(64).collect();
        ErrorReply::new(
            id,
            ErrorCode::InvalidChannel,
            format!("invalid channel {shown:?}: {err}"),
        )
    }

    /// The `error` frame.
    pub fn frame(&self) -> Bytes {
        #[derive(Serialize)]
        struct Error<'a> {
            r#type: &'static str,
            id: &'a Option<Value>,
            code: ErrorCode,
            message: &'a str,
        }
        json_frame(&Error {
            r#type: "error",
            id: &self.id,
            code: self.code,
            message: &self.message,
        })
    }
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow)]
    r#type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<LazyValue<'a>>,
    since: Option<RawSince>,
    offset: Option<u64>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    id: Option<Value>,
}

/// `since` as sent: checked into a [`Since`] by [`since`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSince {
    epoch: Option<String>,
    offset: Option<u64>,
    seq: Option<u64>,
}

/// Longest `epoch` a client may send back; the server's own are 16 characters.
const EPOCH_BYTES_MAX: usize = 64;

/// Checks a subscription's `since`: a string `epoch` and exactly one of `offset` (exact
/// channels only) or `seq`.
fn since(raw: RawSince, pattern: &str, id: &Option<Value>) -> Result<Since, ErrorReply> {
    let bad = |message: &str| ErrorReply::new(id.clone(), ErrorCode::BadRequest, message);
    let Some(epoch) = raw.epoch else {
        return Err(bad("`since` needs the `epoch` the client was given"));
    };
    if epoch.len() > EPOCH_BYTES_MAX {
        return Err(bad(
            "`since.epoch` is longer than any epoch this server gives",
        ));
    }
    let position = match (raw.offset, raw.seq) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(bad("`since` needs exactly one of `offset` or `seq`"))
        }
        (Some(_), None) if channel::is_pattern(pattern) => {
            return Err(bad(
                "`since.offset` names a position in one channel; a wildcard subscription \
                 recovers from `since.seq`",
            ))
        }
        (Some(offset), None) => Position::Offset(offset),
        (None, Some(seq)) => Position::Seq(seq),
    };
    Ok(Since {
        epoch: epoch.into(),
        position,
    })
}

/// The first line of a sonic-rs error: its later lines quote the input back.
fn first_line(err: &sonic_rs::Error) -> String {
    err.to_string().lines().next().unwrap_or("").to_owned()
}

/// Whether `id` may be echoed: a number or a short string.
fn valid_id(id: &Value) -> bool {
    let id_bytes = sonic_rs::to_string(id).map_or(usize::MAX, |text| text.len());
    (id.is_number() || id.is_str()) && id_bytes <= ID_BYTES_MAX
}

/// The `id` of a command that failed to parse as a whole (a wrong type elsewhere), or was
/// refused unparsed (rate-limited), if the message is JSON with a valid `id`, so even that
/// error reply can be matched to its request. A message nested deeper than `depth_max` has
/// none: finding its `id` would recurse through it.
pub fn salvage_id(text: &str, depth_max: usize) -> Option<Value> {
    json::check(text.as_bytes(), depth_max).ok()?;
    salvage_checked_id(text)
}

/// [`salvage_id`] of a message [`json::check`] has passed.
fn salvage_checked_id(text: &str) -> Option<Value> {
    let raw = sonic_rs::get_from_str(text, ["id"]).ok()?;
    let id: Value = sonic_rs::from_str(raw.as_raw_str()).ok()?;
    valid_id(&id).then_some(id)
}

/// Parses one text message into a command, or the error to answer with. A message nested
/// deeper than `depth_max` (`json_depth_max`; its outermost `{` is level 1) is refused before
/// sonic-rs reads it, without an `id`: finding one would recurse through it.
pub fn parse(text: &str, depth_max: usize) -> Result<Command<'_>, ErrorReply> {
    if let Err(err) = json::check(text.as_bytes(), depth_max) {
        return Err(ErrorReply::new(
            None,
            ErrorCode::BadRequest,
            format!("not a valid command: {err}"),
        ));
    }
    let raw: RawCommand = sonic_rs::from_str(text).map_err(|err| {
        ErrorReply::new(
            salvage_checked_id(text),
            ErrorCode::BadRequest,
            format!("not a valid command: {}", first_line(&err)),
        )
    })?;
    let id = raw.id;
    if id.as_ref().is_some_and(|id| !valid_id(id)) {
        return Err(ErrorReply::new(
            None,
            ErrorCode::BadRequest,
            format!("id must be a number or a string of at most {ID_BYTES_MAX} bytes"),
        ));
    }
    let Some(kind) = raw.r#type else {
        return Err(ErrorReply::new(
            id,
            ErrorCode::BadRequest,
            "missing field `type`",
        ));
    };
    let channel = |id: &Option<Value>| {
        raw.channel.clone().ok_or_else(|| {
            ErrorReply::new(id.clone(), ErrorCode::BadRequest, "missing field `channel`")
        })
    };
    match kind.as_ref() {
        "subscribe" => {
            let channel = channel(&id)?;
            let since = match raw.since {
                Some(raw) => Some(since(raw, &channel, &id)?),
                None => None,
            };
            Ok(Command::Subscribe { channel, since, id })
        }
        "refresh" => match raw.token {
            Some(token) => Ok(Command::Refresh { token, id }),
            None => Err(ErrorReply::new(
                id,
                ErrorCode::BadRequest,
                "missing field `token`",
            )),
        },
        "ack" => {
            let channel = channel(&id)?;
            let Some(offset) = raw.offset else {
                return Err(ErrorReply::new(
                    id,
                    ErrorCode::BadRequest,
                    "missing field `offset`",
                ));
            };
            Ok(Command::Ack {
                channel,
                offset,
                id,
            })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            channel: channel(&id)?,
            id,
        }),
        "presence" => Ok(Command::Presence {
            channel: channel(&id)?,
            id,
        }),
        "ping" => Ok(Command::Ping { id }),
        "get_stats" => Ok(Command::GetStats { id }),
        "publish" => {
            let channel = channel(&id)?;
            let Some(data) = raw.data else {
                return Err(ErrorReply::new(
                    id,
                    ErrorCode::BadRequest,
                    "missing field `data`",
                ));
            };
            Ok(Command::Publish {
                channel,
                data: data_text(data, text),
                id,
            })
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(ErrorReply::new(
                id,
                ErrorCode::BadRequest,
                format!("unknown command type {shown:?}"),
            ))
        }
    }
}

/// The raw text of a borrowed `data` value, as a slice of the message it came from.
fn data_text<'a>(data: LazyValue<'a>, message: &'a str) -> &'a str {
    match data.as_raw_cow() {
        Cow::Borrowed(raw) => raw,
        Cow::Owned(raw) => {
            let at = message
                .find(raw.as_str())
                .expect("a lazy value's raw text is part of its input");
            &message[at..at + raw.len()]
        }
    }
}

/// Validates a subscription pattern of at most `max_bytes` (`channel_bytes_max`), as the
/// error reply the contract asks for.
pub fn check_pattern(
    pattern: &str,
    max_bytes: usize,
    id: &Option<Value>,
) -> Result<(), ErrorReply> {
    channel::check_length(pattern, max_bytes)
        .and_then(|()| channel::validate_pattern(pattern))
        .map_err(|err| ErrorReply::invalid_channel(id.clone(), pattern, err))
}

/// Validates a publish channel of at most `max_bytes`, as the error reply the contract asks
/// for.
pub fn check_channel(name: &str, max_bytes: usize, id: &Option<Value>) -> Result<(), ErrorReply> {
    channel::check_length(name, max_bytes)
        .and_then(|()| channel::validate_channel(name))
        .map_err(|err| ErrorReply::invalid_channel(id.clone(), name, err))
}

/// Starting capacity of a reply frame's payload.
const REPLY_BYTES_HINT: usize = 256;

/// Serializes `value` with sonic-rs into a complete text frame.
pub fn json_frame(value: &impl Serialize) -> Bytes {
    // sonic-rs reserves 6 bytes per string byte plus 35 before writing a string, so a smaller
    // start than this reallocates on every reply (benches/codec.rs: 211-325 ns -> 158 ns).
    text_frame_with(REPLY_BYTES_HINT, |buf| {
        sonic_rs::to_writer(bytes::BufMut::writer(buf), value)
            .expect("serializing reply structs to memory cannot fail")
    })
    .0
}

/// One channel's presence as answered (PROTOCOL.md, "Presence"): exact counts and at most
/// `presence_members_max` members, `None` when the caller asked for the counts alone.
#[derive(Debug)]
pub struct PresenceView<'a> {
    /// The channel's full name; written as its clients name it.
    pub channel: &'a str,
    pub connections: usize,
    pub users: usize,
    pub members: Option<&'a [std::sync::Arc<crate::msg::Member>]>,
    pub truncated: bool,
}

/// The presence answer's JSON: `{"type":"presence","id":..}` first for the socket command
/// (`reply`: the command's `id`), `"tenant"` first for a tenant's channel on the control plane
/// (`tenant`). serde_json, not sonic-rs: a member's `info` is spliced in as the raw JSON it is
/// kept as.
pub fn presence_json(
    reply: Option<&Option<Value>>,
    tenant: Option<&str>,
    view: &PresenceView<'_>,
    out: &mut impl std::io::Write,
) {
    #[derive(Serialize)]
    struct Presence<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        r#type: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Box<serde_json::value::RawValue>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tenant: Option<&'a str>,
        channel: &'a str,
        connections: usize,
        users: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<&'a [std::sync::Arc<crate::msg::Member>]>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    }
    // The id is a sonic-rs value (a number or a short string, checked), written as its text.
    let id = reply.and_then(Option::as_ref).map(|id| {
        let text = sonic_rs::to_string(id).expect("an id serializes");
        serde_json::value::RawValue::from_string(text).expect("an id is JSON")
    });
    let presence = Presence {
        r#type: reply.map(|_| "presence"),
        id,
        tenant,
        channel: channel::visible(view.channel),
        connections: view.connections,
        users: view.users,
        members: view.members,
        truncated: view.truncated,
    };
    serde_json::to_writer(out, &presence).expect("writing presence to memory cannot fail");
}

/// The `presence` command's reply.
pub fn presence_frame(id: &Option<Value>, view: &PresenceView<'_>) -> Bytes {
    text_frame_with(REPLY_BYTES_HINT, |buf| {
        presence_json(Some(id), None, view, &mut bytes::BufMut::writer(buf))
    })
    .0
}

/// `{"type":"presence_diff","channel":..,"joined":[..],"left":[..]}`, with `"truncated":true`
/// when the interval had more joins and leaves than `presence_members_max` (the lists then
/// hold that many together; the watcher re-reads the members with `presence`).
pub fn presence_diff_frame(
    channel: &str,
    joined: &[std::sync::Arc<crate::msg::Member>],
    left: &[std::sync::Arc<crate::msg::Member>],
    truncated: bool,
) -> Bytes {
    #[derive(Serialize)]
    struct Diff<'a> {
        r#type: &'static str,
        channel: &'a str,
        joined: &'a [std::sync::Arc<crate::msg::Member>],
        left: &'a [std::sync::Arc<crate::msg::Member>],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    }
    let diff = Diff {
        r#type: "presence_diff",
        channel: channel::visible(channel),
        joined,
        left,
        truncated,
    };
    text_frame_with(REPLY_BYTES_HINT, |buf| {
        serde_json::to_writer(bytes::BufMut::writer(buf), &diff)
            .expect("writing a diff to memory cannot fail")
    })
    .0
}

/// `{"type":"connected",...}`, the first frame of every connection.
pub fn connected_frame(
    conn_id: &str,
    user: Option<&str>,
    shard: usize,
    now_ms: u64,
    heartbeat_s: u64,
    epoch: &str,
) -> Bytes {
    #[derive(Serialize)]
    struct Connected<'a> {
        r#type: &'static str,
        conn_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        shard: usize,
        server_time_ms: u64,
        heartbeat_s: u64,
        epoch: &'a str,
    }
    json_frame(&Connected {
        r#type: "connected",
        conn_id,
        user,
        shard,
        server_time_ms: now_ms,
        heartbeat_s,
        epoch,
    })
}

/// Whether a subscription with `since` recovered what it missed, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrecovered {
    /// The client's epoch is not the server's: offsets restarted (the server restarted).
    EpochChanged,
    /// A message after the client's position is no longer in history.
    HistoryTrimmed,
    /// More was missed than one recovery sends (`recovery_messages_max`, `outbox_bytes_max`).
    TooMany,
    /// The client names a position this epoch has not reached yet.
    UnknownPosition,
    /// The sequencer's lanes were full: the subscription is live, nothing was recovered.
    Overloaded,
}

/// `{"type":"subscribed",...}`: live delivery covers every matching message after `seq`.
/// `recovery` is absent for a plain subscribe, `Ok(())` for a recovered one.
pub fn subscribed_frame(
    channel: &str,
    id: &Option<Value>,
    epoch: &str,
    seq: u64,
    recovery: Option<Result<(), Unrecovered>>,
) -> Bytes {
    subscribed_json(channel, id, epoch, seq, recovery, false)
}

/// `subscribed` with `"server":true`: the control plane subscribed the connection
/// (`POST /v1/users/subscribe`).
pub fn server_subscribed_frame(channel: &str, epoch: &str, seq: u64) -> Bytes {
    subscribed_json(channel, &None, epoch, seq, None, true)
}

fn subscribed_json(
    channel: &str,
    id: &Option<Value>,
    epoch: &str,
    seq: u64,
    recovery: Option<Result<(), Unrecovered>>,
    server: bool,
) -> Bytes {
    #[derive(Serialize)]
    struct Subscribed<'a> {
        r#type: &'static str,
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Option<Value>,
        epoch: &'a str,
        seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Unrecovered>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        server: bool,
    }
    json_frame(&Subscribed {
        r#type: "subscribed",
        channel: channel::visible(channel),
        id,
        epoch,
        seq,
        recovered: recovery.map(|outcome| outcome.is_ok()),
        reason: recovery.and_then(Result::err),
        server,
    })
}

/// `{"type":"gap","channel":..,"from":N,"to":M}`: offsets `N..=M` of the channel were dropped.
pub fn gap_frame(channel: &str, from: u64, to: u64) -> Bytes {
    #[derive(Serialize)]
    struct Gap<'a> {
        r#type: &'static str,
        channel: &'a str,
        from: u64,
        to: u64,
    }
    json_frame(&Gap {
        r#type: "gap",
        channel: channel::visible(channel),
        from,
        to,
    })
}

/// `{"type":"refreshed","id":..,"exp":..}`: the new token is the connection's.
pub fn refreshed_frame(id: &Option<Value>, exp: u64) -> Bytes {
    #[derive(Serialize)]
    struct Refreshed<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Option<Value>,
        exp: u64,
    }
    json_frame(&Refreshed {
        r#type: "refreshed",
        id,
        exp,
    })
}

/// `{"type":"acked",...}`, the answer to an `ack` that carried an `id`.
pub fn acked_frame(id: &Option<Value>, channel: &str, offset: u64) -> Bytes {
    #[derive(Serialize)]
    struct Acked<'a> {
        r#type: &'static str,
        id: &'a Option<Value>,
        channel: &'a str,
        offset: u64,
    }
    json_frame(&Acked {
        r#type: "acked",
        id,
        channel: channel::visible(channel),
        offset,
    })
}

/// `subscribed` or `unsubscribed`.
pub fn channel_reply_frame(kind: &'static str, channel: &str, id: &Option<Value>) -> Bytes {
    channel_reply_json(kind, channel, id, false)
}

/// `unsubscribed` with `"server":true`: the control plane unsubscribed the connection
/// (`POST /v1/users/unsubscribe`).
pub fn server_unsubscribed_frame(channel: &str) -> Bytes {
    channel_reply_json("unsubscribed", channel, &None, true)
}

fn channel_reply_json(
    kind: &'static str,
    channel: &str,
    id: &Option<Value>,
    server: bool,
) -> Bytes {
    #[derive(Serialize)]
    struct Reply<'a> {
        r#type: &'static str,
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Option<Value>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        server: bool,
    }
    json_frame(&Reply {
        r#type: kind,
        channel: channel::visible(channel),
        id,
        server,
    })
}

/// `{"type":"pong",...}`.
pub fn pong_reply_frame(id: &Option<Value>, now_ms: u64) -> Bytes {
    #[derive(Serialize)]
    struct Pong<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Option<Value>,
        server_time_ms: u64,
    }
    json_frame(&Pong {
        r#type: "pong",
        id,
        server_time_ms: now_ms,
    })
}

/// `{"type":"published",...}`, sent once the ingest core has sequenced a client publish.
pub fn published_frame(id: &Option<Value>, channel: &str, offset: u64) -> Bytes {
    #[derive(Serialize)]
    struct Published<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Option<Value>,
        channel: &'a str,
        offset: u64,
    }
    json_frame(&Published {
        r#type: "published",
        id,
        channel: channel::visible(channel),
        offset,
    })
}

/// A connection's own counters, for `get_stats`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ConnStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub subscriptions: usize,
    pub outbox_frames: usize,
    pub outbox_bytes: usize,
}

/// `{"type":"stats","id":...,"conn_id":...,<counters>,"acks":{channel: offset}}`.
pub fn stats_frame(
    id: &Option<Value>,
    conn_id: &str,
    shard: usize,
    stats: ConnStats,
    acks: &[(Box<str>, u64)],
) -> Bytes {
    struct Acks<'a>(&'a [(Box<str>, u64)]);
    impl Serialize for Acks<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(
                self.0
                    .iter()
                    .map(|(full, offset)| (channel::visible(full), offset)),
            )
        }
    }
    #[derive(Serialize)]
    struct Stats<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Option<Value>,
        conn_id: &'a str,
        shard: usize,
        #[serde(flatten)]
        stats: ConnStats,
        acks: Acks<'a>,
    }
    json_frame(&Stats {
        r#type: "stats",
        id,
        conn_id,
        shard,
        stats,
        acks: Acks(acks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::parse`] under the default `json_depth_max`.
    fn parse(text: &str) -> Result<Command<'_>, ErrorReply> {
        super::parse(text, crate::config::defaults::json_depth_max())
    }

    fn payload(frame: &Bytes) -> &str {
        let header_len = if frame[1] == 126 { 4 } else { 2 };
        std::str::from_utf8(&frame[header_len..]).unwrap()
    }

    #[test]
    fn commands_parse_with_their_ids() {
        match parse(r#"{"type":"subscribe","channel":"leads.*","id":1}"#).unwrap() {
            Command::Subscribe { channel, since, id } => {
                assert_eq!(channel, "leads.*");
                assert_eq!(since, None);
                assert_eq!(sonic_rs::to_string(&id).unwrap(), "1");
            }
            other => panic!("expected subscribe, got {other:?}"),
        }
        match parse(r#"{"type":"publish","channel":"c","data":{"x": [1, 2]},"id":"a"}"#).unwrap() {
            Command::Publish { data, .. } => assert_eq!(data, r#"{"x": [1, 2]}"#),
            other => panic!("expected publish, got {other:?}"),
        }
    }

    #[test]
    fn since_takes_an_epoch_and_one_position() {
        let text = r#"{"type":"subscribe","channel":"a.*","since":{"epoch":"e1","seq":41}}"#;
        match parse(text).unwrap() {
            Command::Subscribe { since, .. } => assert_eq!(
                since,
                Some(Since {
                    epoch: "e1".into(),
                    position: Position::Seq(41)
                })
            ),
            other => panic!("expected subscribe, got {other:?}"),
        }
        let text = r#"{"type":"subscribe","channel":"a.b","since":{"epoch":"e1","offset":0}}"#;
        match parse(text).unwrap() {
            Command::Subscribe { since, .. } => {
                assert_eq!(since.unwrap().position, Position::Offset(0))
            }
            other => panic!("expected subscribe, got {other:?}"),
        }
        for (text, says) in [
            (
                r#"{"channel":"a.*","since":{"epoch":"e","offset":1}}"#,
                "wildcard",
            ),
            (
                r#"{"channel":"a","since":{"epoch":"e","offset":1,"seq":2}}"#,
                "exactly one",
            ),
            (r#"{"channel":"a","since":{"epoch":"e"}}"#, "exactly one"),
            (r#"{"channel":"a","since":{"seq":2}}"#, "epoch"),
            (
                r#"{"channel":"a","since":{"epoch":"e","seq":-1}}"#,
                "not a valid",
            ),
            (
                r#"{"channel":"a","since":{"epoch":"e","seq":1,"x":1}}"#,
                "not a valid",
            ),
        ] {
            let text = text.replace(
                "{\"channel\"",
                "{\"type\":\"subscribe\",\"id\":3,\"channel\"",
            );
            let err = parse(&text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
            assert!(err.message.contains(says), "{text}: {}", err.message);
        }
    }

    #[test]
    fn ack_needs_a_channel_and_an_offset() {
        match parse(r#"{"type":"ack","channel":"a.b","offset":7}"#).unwrap() {
            Command::Ack {
                channel, offset, ..
            } => assert_eq!((&*channel, offset), ("a.b", 7)),
            other => panic!("expected ack, got {other:?}"),
        }
        let err = parse(r#"{"type":"ack","channel":"a.b","id":1}"#).unwrap_err();
        assert_eq!(err.message, "missing field `offset`");
    }

    #[test]
    fn bad_commands_get_bad_request_with_the_id_when_known() {
        for (text, has_id) in [
            ("nope", false),
            (r#"{"type":"subscribe","id":7}"#, true),
            (r#"{"type":"dance","id":7}"#, true),
            (r#"{"channel":"a"}"#, false),
            (r#"{"type":"publish","channel":"a","id":7}"#, true),
            (r#"{"type":"ping","id":{"nested":true}}"#, false),
            (r#"{"type":"publish","channel":"a","data":{bad}}"#, false),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(err.id.is_some(), has_id, "{text}");
            assert!(!err.message.contains('\n'), "{text}: {}", err.message);
        }
    }

    #[test]
    fn a_unicode_escape_needs_four_hex_digits_even_in_skipped_values() {
        // Found by the `command` fuzz target: sonic-rs accepted both as a publish and `data`
        // kept the broken escape as raw text for every subscriber.
        for text in [
            &br#"{"type":"publish","channel":"c","data":"a\"b\u00'9\n"}"#[..],
            br#"{"type":"publish","channel":"c","data":"\u0"x","id":1}"#,
            br#"{"type":"ping","extra":"\u12"}"#,
        ] {
            let text = std::str::from_utf8(text).unwrap();
            let err = parse(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
            assert!(err.message.contains("invalid \\u escape"), "{text}");
        }
        match parse(r#"{"type":"publish","channel":"c","data":"\u00e9\\u"}"#).unwrap() {
            Command::Publish { data, .. } => assert_eq!(data, r#""\u00e9\\u""#),
            other => panic!("expected publish, got {other:?}"),
        }
    }

    #[test]
    fn a_command_nests_at_most_depth_max_levels_counting_its_own_braces() {
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        // The command's `{` is level 1, so `data` may nest 4 levels under a limit of 5.
        let publish = |depth| {
            format!(
                r#"{{"type":"publish","channel":"c","data":{},"id":9}}"#,
                nested(depth)
            )
        };
        match super::parse(&publish(4), 5).unwrap() {
            Command::Publish { data, .. } => assert_eq!(data, "[[[[]]]]"),
            other => panic!("expected publish, got {other:?}"),
        }
        let err = super::parse(&publish(5), 5).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(
            err.id.is_none(),
            "a too-deep command is not searched for its id"
        );
        assert_eq!(
            err.message,
            "not a valid command: nested deeper than json_depth_max = 5 (at byte 43)"
        );
        // Every place a value can sit, and broken JSON, is refused the same way.
        for text in [
            format!(r#"{{"type":"ping","id":{}}}"#, nested(5)),
            format!(r#"{{"type":"ping","extra":{}}}"#, nested(5)),
            format!(
                r#"{{"type":"subscribe","channel":"a","since":{}}}"#,
                nested(5)
            ),
            nested(6),
            format!(r#"{{"type":"ping","id":{} "#, "[".repeat(5)),
        ] {
            let err = super::parse(&text, 5).unwrap_err();
            assert!(
                err.message
                    .contains("nested deeper than json_depth_max = 5"),
                "{text}: {}",
                err.message
            );
        }
    }

    #[test]
    fn salvage_finds_no_id_in_a_message_too_deep_to_search() {
        let deep = format!(r#"{{"x":{},"id":7}}"#, "[".repeat(8) + &"]".repeat(8));
        assert_eq!(salvage_id(&deep, 8), None);
        assert_eq!(
            salvage_id(&deep, 9).map(|id| sonic_rs::to_string(&id).unwrap()),
            Some("7".to_owned())
        );
        // A command that fails to parse below the limit still has its id salvaged.
        let err = parse(r#"{"type":"ping","since":[[1]],"id":"r"}"#).unwrap_err();
        assert_eq!(
            err.id.map(|id| sonic_rs::to_string(&id).unwrap()),
            Some(r#""r""#.to_owned())
        );
    }

    #[test]
    fn replies_are_exact_json() {
        let id = Some(sonic_rs::from_str::<Value>("4").unwrap());
        assert_eq!(
            payload(&published_frame(&id, "chat.r1", 9)),
            r#"{"type":"published","id":4,"channel":"chat.r1","offset":9}"#
        );
        assert_eq!(
            payload(&channel_reply_frame("unsubscribed", "a.*", &None)),
            r#"{"type":"unsubscribed","channel":"a.*"}"#
        );
        assert_eq!(
            payload(&server_unsubscribed_frame("$t:acme.a.*")),
            r#"{"type":"unsubscribed","channel":"a.*","server":true}"#
        );
        assert_eq!(
            payload(&server_subscribed_frame("$t:acme.$user.ada", "e1", 3)),
            r#"{"type":"subscribed","channel":"$user","epoch":"e1","seq":3,"server":true}"#
        );
        assert_eq!(
            payload(&channel_reply_frame("unsubscribed", "a.*", &None)),
            r#"{"type":"unsubscribed","channel":"a.*"}"#
        );
        assert_eq!(
            payload(&subscribed_frame("a.*", &id, "e1", 12, None)),
            r#"{"type":"subscribed","channel":"a.*","id":4,"epoch":"e1","seq":12}"#
        );
        assert_eq!(
            payload(&subscribed_frame("a.*", &None, "e1", 12, Some(Ok(())))),
            r#"{"type":"subscribed","channel":"a.*","epoch":"e1","seq":12,"recovered":true}"#
        );
        assert_eq!(
            payload(&subscribed_frame(
                "a.*",
                &None,
                "e1",
                12,
                Some(Err(Unrecovered::HistoryTrimmed))
            )),
            r#"{"type":"subscribed","channel":"a.*","epoch":"e1","seq":12,"recovered":false,"reason":"history_trimmed"}"#
        );
        assert_eq!(
            payload(&gap_frame("p.eu", 3, 9)),
            r#"{"type":"gap","channel":"p.eu","from":3,"to":9}"#
        );
        let err = ErrorReply::new(None, ErrorCode::NotSubscribed, "not \"subscribed\"");
        assert_eq!(
            payload(&err.frame()),
            r#"{"type":"error","id":null,"code":"not_subscribed","message":"not \"subscribed\""}"#
        );
    }
}
