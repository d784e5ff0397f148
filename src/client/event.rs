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
        /// The server's run of offsets (delivery spec); `None` from a server without positions.
        epoch: Option<String>,
        /// How many connections came before this one (0 for the first).
        reconnects: u64,
    },
    /// The server confirmed a subscription (first, repeated or after a reconnect).
    Subscribed {
        pattern: String,
        epoch: Option<String>,
        seq: Option<u64>,
        /// After a reconnect: whether every missed message follows (`true`), or what was missed
        /// is lost (`false`, see `reason`). `None` for a subscription with nothing to recover.
        recovered: Option<bool>,
        /// Why not recovered: `epoch_changed`, `history_trimmed` or `too_many`.
        reason: Option<String>,
    },
    /// The server confirmed an unsubscribe.
    Unsubscribed { pattern: String },
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
    /// A connection ended, or an attempt failed; the next attempt starts after `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
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
    epoch: Option<String>,
    recovered: Option<bool>,
    reason: Option<String>,
    code: Option<String>,
    message: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
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
            epoch: incoming.epoch,
            seq: incoming.seq,
            recovered: incoming.recovered,
            reason: incoming.reason,
        },
        "unsubscribed" => Event::Unsubscribed {
            pattern: need(incoming.channel, kind, "channel")?,
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
            epoch,
            seq,
            recovered,
            reason,
        })) = parse_frame(frame)
        else {
            panic!("subscribed")
        };
        assert_eq!(
            (pattern, epoch, seq, recovered, reason),
            (
                "a.*".to_string(),
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
        let Ok(Frame::Connected { conn_id, epoch }) = parse_frame(
            br#"{"type":"connected","conn_id":"0-1","shard":0,"server_time_ms":1,"heartbeat_s":25,"epoch":"ab"}"#,
        ) else {
            panic!("connected")
        };
        assert_eq!((conn_id.as_str(), epoch.as_deref()), ("0-1", Some("ab")));
        assert!(matches!(
            parse_frame(br#"{"type":"pong","id":4,"server_time_ms":1}"#),
            Ok(Frame::Pong { id: Some(4) })
        ));
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
