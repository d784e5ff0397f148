//! Encode once: the complete WebSocket frame of a published message, built on the ingest core.
//!
//! The frame is a fixed envelope around parts that are already serialized: the channel name
//! (validated to need no escaping), three integers, and the `data` value as the raw JSON text
//! sonic-rs validated on the way in. Writing the envelope directly avoids re-encoding `data`;
//! every shard then writes these same bytes to every subscriber, and nothing downstream copies
//! or re-encodes them. With `permessage_deflate` on, [`delivery`] adds the frame's compressed twin,
//! also made once here: context-free, so the same bytes suit every connection that negotiated
//! the extension (see [`crate::ws::deflate`]).

use std::sync::Arc;

use bytes::BufMut;

use crate::channel;
use crate::ingest::Priority;
use crate::msg::{Delivery, Slow, Stamp};
use crate::ws::frame::text_frame_with;

/// The start of every message's JSON; the channel name follows it directly.
pub const PREFIX: &[u8] = br#"{"type":"message","channel":""#;

const OFFSET_KEY: &[u8] = br#"","offset":"#;
const SEQ_KEY: &[u8] = br#","seq":"#;
const TS_KEY: &[u8] = br#","ts_ms":"#;
const DATA_KEY: &[u8] = br#","data":"#;

/// Where a delivery's JSON payload starts in its frame (after the WebSocket header): the
/// channel name sits right after [`PREFIX`], and this module alone knows that layout.
pub fn payload_start(delivery: &Delivery) -> u8 {
    let start = usize::from(delivery.channel_start) - PREFIX.len();
    u8::try_from(start).expect("a frame header is at most 10 bytes")
}

/// One numbered message, from a local publish or back from the cluster: everything its
/// delivery is made of but how this node treats its channel.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The channel's full name (with a tenant's scope, if any).
    pub channel: &'a str,
    pub offset: u64,
    pub ts_ms: u64,
    /// Raw, validated JSON.
    pub data: &'a str,
    pub priority: Priority,
    /// Its `seq` is the publish number.
    pub stamp: Stamp,
}

/// How this node delivers a channel's messages, resolved by the sequencer from the channel's
/// namespace and the config.
#[derive(Debug, Clone, Copy)]
pub struct Treatment {
    pub slow: Slow,
    /// See [`Delivery::namespace`].
    pub namespace: u16,
    /// Make the compressed twin (`permessage_deflate`).
    pub deflate: bool,
}

/// The one place a message becomes its delivery: the `message` frame, in one allocation of
/// exactly its size, its compressed twin when `treatment` asks for one, its channel's
/// slow-consumer policy and namespace, and its stamp. The frame names the channel as its
/// subscribers do, without a tenant's scope (see [`channel::TENANT_MARK`]) and as `$user`
/// for a user's stream (see [`channel::USER_CHANNEL`]).
pub fn delivery(message: &Message<'_>, treatment: Treatment) -> Delivery {
    let Message {
        channel: full,
        offset,
        ts_ms,
        data,
        priority,
        stamp,
    } = *message;
    let channel = channel::visible(full);
    assert!(
        channel.len() <= usize::from(u8::MAX) && channel.is_ascii(),
        "channels are validated before sequencing"
    );
    let mut offset_text = itoa::Buffer::new();
    let mut seq_text = itoa::Buffer::new();
    let mut ts_text = itoa::Buffer::new();
    let offset_text = offset_text.format(offset);
    let seq_text = seq_text.format(stamp.publish);
    let ts_text = ts_text.format(ts_ms);
    let payload_bytes = PREFIX.len()
        + channel.len()
        + OFFSET_KEY.len()
        + offset_text.len()
        + SEQ_KEY.len()
        + seq_text.len()
        + TS_KEY.len()
        + ts_text.len()
        + DATA_KEY.len()
        + data.len()
        + 1;
    let (frame, header_len) = text_frame_with(payload_bytes, |buf| {
        buf.put_slice(PREFIX);
        buf.put_slice(channel.as_bytes());
        buf.put_slice(OFFSET_KEY);
        buf.put_slice(offset_text.as_bytes());
        buf.put_slice(SEQ_KEY);
        buf.put_slice(seq_text.as_bytes());
        buf.put_slice(TS_KEY);
        buf.put_slice(ts_text.as_bytes());
        buf.put_slice(DATA_KEY);
        buf.put_slice(data.as_bytes());
        buf.put_u8(b'}');
    });
    let deflated = treatment
        .deflate
        .then(|| crate::ws::frame::deflated_twin(&frame));
    let delivery = Delivery {
        frame,
        deflated,
        channel_start: u16::try_from(header_len + PREFIX.len())
            .expect("a header is at most 10 bytes"),
        channel_len: channel.len() as u8,
        scoped: (channel.len() != full.len()).then(|| Arc::from(full)),
        priority,
        offset,
        slow: treatment.slow,
        namespace: treatment.namespace,
        stamp,
    };
    assert_eq!(
        delivery.channel(),
        full,
        "the shard finds the channel where it was written"
    );
    debug_assert_eq!(
        delivery.frame.len(),
        header_len + payload_bytes,
        "the size computed up front is exact, so building the frame never reallocates"
    );
    delivery
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Treatment = Treatment {
        slow: Slow::Disconnect,
        namespace: 0,
        deflate: false,
    };

    fn message<'a>(channel: &'a str, offset: u64, ts_ms: u64, data: &'a str) -> Message<'a> {
        Message {
            channel,
            offset,
            ts_ms,
            data,
            priority: Priority::Normal,
            stamp: Stamp {
                publish: 1,
                accepted: std::time::Instant::now(),
            },
        }
    }

    #[test]
    fn message_frame_is_exact_and_locates_its_channel() {
        let conflating = Treatment {
            slow: Slow::Conflate(Some(3)),
            namespace: 2,
            deflate: false,
        };
        let delivery = delivery(
            &message("leads.42", 7, 1_700_000_000_000, r#"{"score":9}"#),
            conflating,
        );
        assert_eq!(
            (delivery.slow, delivery.namespace, delivery.offset),
            (Slow::Conflate(Some(3)), 2, 7)
        );
        assert!(delivery.deflated.is_none());
        let json = r#"{"type":"message","channel":"leads.42","offset":7,"seq":1,"ts_ms":1700000000000,"data":{"score":9}}"#;
        assert_eq!(&delivery.frame[..2], &[0x81, json.len() as u8]);
        assert_eq!(&delivery.frame[2..], json.as_bytes());
        assert_eq!(delivery.channel(), "leads.42");
        use sonic_rs::JsonValueTrait;
        let parsed: sonic_rs::Value = sonic_rs::from_slice(&delivery.frame[2..]).unwrap();
        assert_eq!(parsed["offset"].as_u64(), Some(7));
    }

    #[test]
    fn the_deflated_twin_is_the_same_message() {
        let data = format!("\"{}\"", "ab".repeat(200));
        let compressing = Treatment {
            deflate: true,
            ..PLAIN
        };
        let delivery = delivery(&message("leads.42", 7, 1, &data), compressing);
        let twin = delivery.deflated.clone().unwrap();
        assert_eq!(twin[0], 0xC1);
        assert!(twin.len() < delivery.frame.len() / 2);
        let start = crate::ws::frame::server_header_len(&twin);
        let mut inflater = crate::ws::deflate::Inflater::default();
        let mut out = Vec::new();
        inflater.push(&twin[start..], &mut out, 1 << 20).unwrap();
        inflater.finish(&mut out, 1 << 20).unwrap();
        assert_eq!(
            out,
            &delivery.frame[usize::from(payload_start(&delivery))..]
        );
    }

    #[test]
    fn large_data_gets_a_longer_header() {
        let data = format!("\"{}\"", "x".repeat(70_000));
        let delivery = delivery(&message("a", 1, 2, &data), PLAIN);
        assert_eq!(delivery.frame[1], 127);
        assert_eq!(delivery.channel(), "a");
    }
}
