//! What the client hands the application, and the server's text frames read into it.
//!
//! Owns the [`Event`] type and the one parse of a server text frame ([`parse_frame`]). It never
//! touches a socket or the subscriptions: the session decides what a frame does to the
//! connection; this module only says what the frame is. A message's `data` stays the server's
//! raw JSON text ([`RawValue`]), so nothing the publisher wrote is reordered or re-encoded.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One thing that happened, in the order it happened on the client's connection(s).
#[derive(Debug, Clone)]
pub enum Event {
    /// A connection reached the server's `connected` frame; subscriptions are being resent.
    Connected {
        conn_id: String,
        /// The connection's user (its token's `sub`, or `?user=` on a server without auth);
        /// `None` for an anonymous connection. A connection with a user receives what is
        /// published to that user as [`Message`]s on the channel `$user`.
        user: Option<String>,
        /// The server's run of offsets (delivery spec); `None` from a server without positions.
        epoch: Option<String>,
        /// How many connections came before this one (0 for the first).
        reconnects: u64,
    },
    /// The server confirmed a subscription (first, repeated or after a reconnect), or
    /// subscribed the connection itself (`server`: `POST /v1/users/subscribe`); the client
    /// keeps a server-side subscription across reconnects like its own.
    Subscribed {
        pattern: String,
        /// Made by the server for the connection's user, not asked for by this client.
        server: bool,
        epoch: Option<String>,
        seq: Option<u64>,
        /// After a reconnect: whether every missed message follows (`true`), or what was missed
        /// is lost (`false`, see `reason`). `None` for a subscription with nothing to recover.
        recovered: Option<bool>,
        /// Why not recovered: `epoch_changed`, `history_trimmed` or `too_many`.
        reason: Option<String>,
    },
    /// The server confirmed an unsubscribe, or (`server`: `POST /v1/users/unsubscribe`) ended
    /// a subscription itself; the client forgets it either way.
    Unsubscribed { pattern: String, server: bool },
    /// A delivery.
    Message(Message),
    /// The server dropped the messages of `channel` with offsets `from..=to` for this client (a
    /// slow consumer on a `drop_oldest` namespace); they are in the server's history.
    Gap { channel: String, from: u64, to: u64 },
    /// The reply to [`Client::publish`](crate::Client::publish).
    Published {
        id: u64,
        channel: String,
        offset: u64,
    },
    /// The reply to [`Client::ack`](crate::Client::ack).
    Acked {
        id: u64,
        channel: String,
        offset: u64,
    },
    /// An error: the server's `error` frame (its `code` and `id`), or `bad_frame` when the
    /// server sent a text frame this client cannot read (the connection stays up).
    Error {
        id: Option<u64>,
        code: String,
        message: String,
    },
    /// The reply to [`Client::presence`](crate::Client::presence): who is subscribed to the
    /// channel (PROTOCOL.md, "Presence").
    Presence { id: Option<u64>, presence: Presence },
    /// Joins and leaves on a subscribed channel of a `join_leave` namespace since the previous
    /// diff (a connection that joined and left in between may be in neither).
    PresenceDiff {
        channel: String,
        joined: Vec<Member>,
        left: Vec<Member>,
    },
    /// A connection ended, or an attempt failed; the next attempt starts after `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
    /// The server closed the connection for good: 4010, every connection of the user
    /// disconnected by the control plane (`POST /v1/users/disconnect`), with its `reason`. The
    /// client does not reconnect (unless `reconnect_after_disconnect`): this is the last event,
    /// [`Client::next_event`](crate::Client::next_event) returns `None` at once from then on,
    /// and sends fail with `NotConnected`.
    Closed { code: u16, reason: String },
}

/// Who is subscribed to a channel, as the server counts it over every shard and node.
#[derive(Debug, Clone, Deserialize)]
pub struct Presence {
    pub channel: String,
    /// Subscribed connections.
    pub connections: u64,
    /// Distinct users among them (anonymous connections count none).
    pub users: u64,
    /// The subscribed connections, at most the server's `presence_members_max`.
    #[serde(default)]
    pub members: Vec<Member>,
    /// Whether `members` stops short of `connections` (`presence_members_max`).
    #[serde(default)]
    pub truncated: bool,
}

/// One subscribed connection.
#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    /// Its user; `None` for an anonymous connection.
    #[serde(default)]
    pub user: Option<String>,
    pub conn_id: String,
    /// Its token's `info` claim, the server's JSON byte for byte; `None` without one.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
}

/// One delivery, as the server sent it.
#[derive(Debug, Clone)]
pub struct Message {
    pub channel: String,
    pub offset: u64,
    /// The node-wide position; `None` from a server without positions.
    pub seq: Option<u64>,
    pub ts_ms: u64,
    /// The published JSON, byte for byte.
    pub data: Box<RawValue>,
}

/// A server text frame, read.
#[derive(Debug)]
pub enum Frame {
    Connected {
        conn_id: String,
        user: Option<String>,
        epoch: Option<String>,
    },
    Pong {
        id: Option<u64>,
    },
    /// Any frame that becomes an [`Event`] as is.
    Event(Event),
    /// A `type` this client does not know (a newer server); skipped.
    Unknown,
}

/// Why a server text frame could not be read. The session reports it as an
/// [`Event::Error`] with code `bad_frame` and keeps the connection.
#[derive(Debug)]
pub enum BadFrame {
    /// Not JSON, or a field of the wrong JSON type; carries the parser's message.
    Json(String),
    /// A frame of a known `type` lacks a field it must carry.
    Missing { kind: String, field: &'static str },
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Json(why) => write!(f, "server frame is not the expected JSON: {why}"),
            Self::Missing { kind, field } => write!(f, "server {kind:?} frame lacks {field:?}"),
        }
    }
}

/// Every field any server frame carries; serde skips the ones a frame does not.
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    offset: Option<u64>,
    seq: Option<u64>,
    ts_ms: Option<u64>,
    data: Option<Box<RawValue>>,
    id: Option<serde_json::Value>,
    conn_id: Option<String>,
    user: Option<String>,
    epoch: Option<String>,
    server: Option<bool>,
    recovered: Option<bool>,
    reason: Option<String>,
    code: Option<String>,
    message: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    connections: Option<u64>,
    users: Option<u64>,
    members: Option<Vec<Member>>,
    truncated: Option<bool>,
    joined: Option<Vec<Member>>,
    left: Option<Vec<Member>>,
}

/// `value`, or which field of which frame is missing.
fn need<T>(value: Option<T>, kind: &str, field: &'static str) -> Result<T, BadFrame> {
    value.ok_or_else(|| BadFrame::Missing {
        kind: kind.to_string(),
        field,
    })
}

/// Reads one server text frame.
pub fn parse_frame(text: &[u8]) -> Result<Frame, BadFrame> {
    let incoming: Incoming =
        serde_json::from_slice(text).map_err(|err| BadFrame::Json(err.to_string()))?;
    let kind = incoming.kind.as_str();
    let id = incoming.id.as_ref().and_then(serde_json::Value::as_u64);
    let event = match kind {
        "connected" => {
            return Ok(Frame::Connected {
                conn_id: need(incoming.conn_id, kind, "conn_id")?,
                user: incoming.user,
                epoch: incoming.epoch,
            })
        }
        "pong" => return Ok(Frame::Pong { id }),
        "message" => Event::Message(Message {
            channel: need(incoming.channel, kind, "channel")?,
            offset: need(incoming.offset, kind, "offset")?,
            seq: incoming.seq,
            ts_ms: need(incoming.ts_ms, kind, "ts_ms")?,
            data: need(incoming.data, kind, "data")?,
        }),
        "subscribed" => Event::Subscribed {
            pattern: need(incoming.channel, kind, "channel")?,
            server: incoming.server.unwrap_or(false),
            epoch: incoming.epoch,
            seq: incoming.seq,
            recovered: incoming.recovered,
            reason: incoming.reason,
        },
        "unsubscribed" => Event::Unsubscribed {
            pattern: need(incoming.channel, kind, "channel")?,
            server: incoming.server.unwrap_or(false),
        },
        "presence" => Event::Presence {
            id,
            presence: Presence {
                channel: need(incoming.channel, kind, "channel")?,
                connections: need(incoming.connections, kind, "connections")?,
                users: need(incoming.users, kind, "users")?,
                members: incoming.members.unwrap_or_default(),
                truncated: incoming.truncated.unwrap_or(false),
            },
        },
        "presence_diff" => Event::PresenceDiff {
            channel: need(incoming.channel, kind, "channel")?,
            joined: incoming.joined.unwrap_or_default(),
            left: incoming.left.unwrap_or_default(),
        },
        "gap" => Event::Gap {
            channel: need(incoming.channel, kind, "channel")?,
            from: need(incoming.from, kind, "from")?,
            to: need(incoming.to, kind, "to")?,
        },
        "published" => Event::Published {
            id: need(id, kind, "id")?,
            channel: need(incoming.channel, kind, "channel")?,
            offset: need(incoming.offset, kind, "offset")?,
        },
        "acked" => Event::Acked {
            id: need(id, kind, "id")?,
            channel: need(incoming.channel, kind, "channel")?,
            offset: need(incoming.offset, kind, "offset")?,
        },
        "error" => Event::Error {
            id,
            code: need(incoming.code, kind, "code")?,
            message: incoming.message.unwrap_or_default(),
        },
        _ => return Ok(Frame::Unknown),
    };
    Ok(Frame::Event(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_keeps_its_data_byte_for_byte() {
        let frame = br#"{"type":"message","channel":"a.b","offset":7,"seq":12,"ts_ms":5,"data":{"z":1,"a":[2, 3]}}"#;
        let Ok(Frame::Event(Event::Message(message))) = parse_frame(frame) else {
            panic!("a message")
        };
        assert_eq!(
            (
                message.channel.as_str(),
                message.offset,
                message.seq,
                message.ts_ms
            ),
            ("a.b", 7, Some(12), 5)
        );
        assert_eq!(message.data.get(), r#"{"z":1,"a":[2, 3]}"#);
    }

    #[test]
    fn delivery_extension_frames_are_read() {
        let frame = br#"{"type":"subscribed","channel":"a.*","id":1,"epoch":"00ff","seq":9,"recovered":false,"reason":"too_many"}"#;
        let Ok(Frame::Event(Event::Subscribed {
            pattern,
            server,
            epoch,
            seq,
            recovered,
            reason,
        })) = parse_frame(frame)
        else {
            panic!("subscribed")
        };
        assert_eq!(
            (pattern, server, epoch, seq, recovered, reason),
            (
                "a.*".to_string(),
                false,
                Some("00ff".to_string()),
                Some(9),
                Some(false),
                Some("too_many".to_string())
            )
        );
        let Ok(Frame::Event(Event::Gap { channel, from, to })) =
            parse_frame(br#"{"type":"gap","channel":"p.eu","from":3,"to":8}"#)
        else {
            panic!("gap")
        };
        assert_eq!((channel.as_str(), from, to), ("p.eu", 3, 8));
        let Ok(Frame::Connected {
            conn_id,
            user,
            epoch,
        }) = parse_frame(
            br#"{"type":"connected","conn_id":"0-1","shard":0,"server_time_ms":1,"heartbeat_s":25,"epoch":"ab"}"#,
        )
        else {
            panic!("connected")
        };
        assert_eq!(
            (conn_id.as_str(), user, epoch.as_deref()),
            ("0-1", None, Some("ab"))
        );
        assert!(matches!(
            parse_frame(br#"{"type":"pong","id":4,"server_time_ms":1}"#),
            Ok(Frame::Pong { id: Some(4) })
        ));
    }

    #[test]
    fn user_frames_are_read() {
        let Ok(Frame::Connected { user, .. }) = parse_frame(
            br#"{"type":"connected","conn_id":"1-4","user":"ada","shard":1,"server_time_ms":1,"heartbeat_s":25,"epoch":"ab"}"#,
        ) else {
            panic!("connected")
        };
        assert_eq!(user.as_deref(), Some("ada"));
        let Ok(Frame::Event(Event::Subscribed {
            pattern, server, ..
        })) = parse_frame(
            br#"{"type":"subscribed","channel":"quotes.*","server":true,"epoch":"ab","seq":3}"#,
        )
        else {
            panic!("server subscribed")
        };
        assert_eq!((pattern.as_str(), server), ("quotes.*", true));
        assert!(matches!(
            parse_frame(br#"{"type":"unsubscribed","channel":"quotes.*","server":true}"#),
            Ok(Frame::Event(Event::Unsubscribed { server: true, .. }))
        ));
    }

    #[test]
    fn presence_frames_are_read() {
        let frame = br#"{"type":"presence","id":7,"channel":"room.1","connections":2,"users":1,"members":[{"user":"ada","conn_id":"0-1","info":{"name":"Ada"}},{"user":null,"conn_id":"1-2"}],"truncated":true}"#;
        let Ok(Frame::Event(Event::Presence { id, presence })) = parse_frame(frame) else {
            panic!("presence")
        };
        assert_eq!(id, Some(7));
        assert_eq!(
            (
                presence.channel.as_str(),
                presence.connections,
                presence.users,
                presence.truncated
            ),
            ("room.1", 2, 1, true)
        );
        let members: Vec<_> = presence
            .members
            .iter()
            .map(|member| {
                (
                    member.user.as_deref(),
                    member.conn_id.as_str(),
                    member.info.as_ref().map(|info| info.get()),
                )
            })
            .collect();
        assert_eq!(
            members,
            [
                (Some("ada"), "0-1", Some(r#"{"name":"Ada"}"#)),
                (None, "1-2", None)
            ]
        );
        let counts = br#"{"type":"presence","id":8,"channel":"room.1","connections":0,"users":0}"#;
        let Ok(Frame::Event(Event::Presence { presence, .. })) = parse_frame(counts) else {
            panic!("counts")
        };
        assert!(presence.members.is_empty() && !presence.truncated);
        let diff = br#"{"type":"presence_diff","channel":"room.1","joined":[{"user":"bob","conn_id":"0-9"}],"left":[]}"#;
        let Ok(Frame::Event(Event::PresenceDiff {
            channel,
            joined,
            left,
        })) = parse_frame(diff)
        else {
            panic!("presence_diff")
        };
        assert_eq!(
            (channel.as_str(), joined[0].user.as_deref(), left.len()),
            ("room.1", Some("bob"), 0)
        );
        let err =
            parse_frame(br#"{"type":"presence","id":1,"channel":"r","users":0}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"server "presence" frame lacks "connections""#
        );
    }

    #[test]
    fn unknown_types_are_skipped_and_broken_frames_named() {
        assert!(matches!(
            parse_frame(br#"{"type":"stats","id":1}"#),
            Ok(Frame::Unknown)
        ));
        let err = parse_frame(br#"{"type":"message","channel":"a"}"#).unwrap_err();
        assert_eq!(err.to_string(), r#"server "message" frame lacks "offset""#);
        assert!(matches!(parse_frame(b"nope"), Err(BadFrame::Json(_))));
    }
}
