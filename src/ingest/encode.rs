//! Encode once: the complete WebSocket frame of a published message, built on the ingest core.
//!
//! The frame is a fixed envelope around parts that are already serialized: the channel name
//! (validated to need no escaping), three integers, and the `data` value as the raw JSON text
//! sonic-rs validated on the way in. Writing the envelope directly avoids re-encoding `data`;
//! every shard then writes these same bytes to every subscriber, and nothing downstream copies
//! or re-encodes them. With `permessage_deflate` on, [`deflate`] adds the frame's compressed twin,
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

/// Builds the `message` frame for one publish, in one allocation of exactly its size. Its
/// `seq` is the publish number of `stamp`. `full` is the channel's full name; the frame names
/// it as its subscribers do, without a tenant's scope (see [`channel::TENANT_MARK`]). The
/// delivery's `namespace` is 0; the sequencer sets it.
pub fn message(
    full: &str,
    offset: u64,
    ts_ms: u64,
    data: &str,
    priority: Priority,
    slow: Slow,
    stamp: Stamp,
) -> Delivery {
    let (tenant, channel) = channel::split_scope(full);
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
    let delivery = Delivery {
        frame,
        deflated: None,
        channel_start: u16::try_from(header_len + PREFIX.len())
            .expect("a header is at most 10 bytes"),
        channel_len: channel.len() as u8,
        scoped: tenant.map(|_| Arc::from(full)),
        priority,
        offset,
        slow,
        namespace: 0,
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

/// Adds the compressed twin of `delivery`'s frame, once, for every shard and connection.
pub fn deflate(delivery: &mut Delivery) {
    assert!(delivery.deflated.is_none(), "a frame is compressed once");
    delivery.deflated = Some(crate::ws::frame::deflated_twin(&delivery.frame));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            publish: 1,
            accepted: std::time::Instant::now(),
        }
    }

    #[test]
    fn message_frame_is_exact_and_locates_its_channel() {
        let delivery = message(
            "leads.42",
            7,
            1_700_000_000_000,
            r#"{"score":9}"#,
            Priority::Normal,
            Slow::Disconnect,
            stamp(),
        );
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
        let mut delivery = message(
            "leads.42",
            7,
            1,
            &format!("\"{}\"", "ab".repeat(200)),
            Priority::Normal,
            Slow::Disconnect,
            stamp(),
        );
        deflate(&mut delivery);
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
        let delivery = message(
            "a",
            1,
            2,
            &data,
            Priority::Critical,
            Slow::Disconnect,
            stamp(),
        );
        assert_eq!(delivery.frame[1], 127);
        assert_eq!(delivery.channel(), "a");
    }
}
