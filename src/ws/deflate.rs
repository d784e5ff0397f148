//! permessage-deflate (RFC 7692): the offer a client makes in its upgrade, and the codec that
//! compresses server messages and inflates client ones.
//!
//! corecast never keeps a compression context between messages: every message is deflated on its
//! own (`server_no_context_takeover`, always in the response) and every client is asked to do the
//! same (`client_no_context_takeover`, also always in the response; RFC 7692 section 7.1.1.2 lets
//! a server ask this of any client). That is what keeps encode-once: a published frame is
//! compressed once on the ingest core, and the same bytes are correct for every connection that
//! negotiated the extension, whatever it received before. It also means an idle connection holds
//! no deflate state, and an inflater is reset, not kept warm, between messages.
//!
//! The window is always 32 KiB (15 bits). A client that asks `server_max_window_bits=N` with N
//! below 15 is accepted with that value echoed, and then simply gets its messages uncompressed,
//! which the RFC always allows; `client_max_window_bits` needs nothing, as a 15-bit inflater reads
//! any smaller window. An offer corecast cannot read (an unknown or repeated parameter, a bad
//! value) is declined and the next one considered, as section 5 asks.
//!
//! Like the other codecs this module never touches a socket. The inflater is bounded: it never
//! grows a message past `message_bytes_max`, so a small compressed frame cannot make the server
//! allocate more than a plain one could (a "zip bomb" ends in close 1009).
//!
//! The codec is flate2 on its zlib-rs backend (a pure-Rust zlib): `cargo bench --bench deflate`
//! measured it at about a third of miniz_oxide's time per message here, most of which is the
//! reset between context-free messages.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's registered name.
pub const EXTENSION: &str = "permessage-deflate";

/// What a deflate block flushed with `Z_SYNC_FLUSH` ends with; RFC 7692 section 7.2.1 strips it
/// from every message and the receiver puts it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The only window corecast compresses with: 2^15 = 32 KiB.
const WINDOW_BITS: u8 = 15;

/// Most output the inflater produces per step; the buffer grows by at most this much at once.
const INFLATE_STEP_BYTES: usize = 64 * 1024;

/// The deflate level of server messages: 1, the fastest. Messages are compressed without
/// context, so a higher level finds little more to share inside one message and costs several
/// times the CPU (see the README's permessage-deflate section for the measurement).
const LEVEL: u32 = 1;

/// What a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The largest window the client accepts in server messages: 15 unless it asked for less.
    pub server_window_bits: u8,
}

impl Deflate {
    /// Whether server messages to this connection may be compressed: only with a full window
    /// (see the module doc); otherwise they go uncompressed.
    pub fn compresses(&self) -> bool {
        self.server_window_bits == WINDOW_BITS
    }

    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response_value(&self) -> String {
        let mut value =
            format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if self.server_window_bits != WINDOW_BITS {
            value.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits
            ));
        }
        value
    }
}

/// Picks the first permessage-deflate offer corecast can honour from the request's
/// `Sec-WebSocket-Extensions` header values (in order; each may list several extensions).
/// `None`: no offer, or none acceptable: the connection runs without the extension.
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Deflate> {
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

/// Reads one extension offer (`name; param; param=value`); `Some` if it is permessage-deflate
/// with parameters corecast understands.
fn accept_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_window_bits = WINDOW_BITS;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_window_bits = window_bits(value?)?;
                2
            }
            "client_max_window_bits" => {
                if let Some(value) = value {
                    window_bits(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(Deflate { server_window_bits })
}

/// A window size parameter: a decimal 8 to 15 (RFC 7692 section 7.1.2), no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

thread_local! {
    /// One compressor per thread (the ingest core's, each shard's), reset before every message:
    /// making one allocates its window and hash tables (a few hundred KiB), which a reset reuses.
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// Appends `payload` deflated as one message, without context and without the trailing
/// `00 00 ff ff` (RFC 7692 section 7.2.1), to `out`.
pub fn compress_into(payload: &[u8], out: &mut Vec<u8>) {
    COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        let start = out.len();
        out.reserve(payload.len() / 2 + 64);
        loop {
            let consumed = compressor.total_in() as usize;
            let written_before = out.len();
            compressor
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .expect("deflating from memory to memory cannot fail");
            let done = compressor.total_in() as usize == payload.len();
            // The deflater may stop short of the buffer's end with output still pending, so "room
            // left" alone does not prove the flush finished; the flush's tail does.
            let flushed = out.len() < out.capacity() && out[start..].ends_with(&TAIL);
            if done && (flushed || out.len() == written_before) {
                break;
            }
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.capacity().max(1024));
            }
        }
        assert!(
            out.len() >= start + TAIL.len() && out.ends_with(&TAIL),
            "a sync flush ends with an empty stored block"
        );
        out.truncate(out.len() - TAIL.len());
    });
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The inflated message would exceed `message_bytes_max`: close 1009.
    TooBig,
    /// The bytes are not a deflate stream: close 1007 (RFC 7692 section 8 requires failing).
    Corrupt,
}

/// Inflates one connection's compressed messages, one at a time, without context.
pub struct Inflater {
    decompress: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            decompress: Decompress::new(false),
        }
    }
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Inflater {
    /// Appends what `input` (the next compressed bytes of the message) inflates to, to `out`,
    /// never letting `out` hold more than `max_bytes`.
    pub fn push(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max_bytes: usize,
    ) -> Result<(), InflateError> {
        let mut consumed = 0;
        loop {
            if out.len() > max_bytes {
                return Err(InflateError::TooBig);
            }
            // One byte past the limit, so that a message exactly at it is told from one over.
            let room = (max_bytes + 1 - out.len()).min(INFLATE_STEP_BYTES);
            if out.capacity() - out.len() < room {
                out.reserve_exact(room);
            }
            let (in_before, out_before) = (self.decompress.total_in(), out.len());
            let status = self
                .decompress
                .decompress_vec(&input[consumed..], out, FlushDecompress::None)
                .map_err(|_| InflateError::Corrupt)?;
            consumed += (self.decompress.total_in() - in_before) as usize;
            if out.len() > max_bytes {
                return Err(InflateError::TooBig);
            }
            let progressed = self.decompress.total_in() > in_before || out.len() > out_before;
            // Only a step that moved nothing proves the inflater holds no more output: like the
            // compressor, it may stop short of the buffer's end with some still pending.
            match status {
                // A final block ends the stream: whatever follows (the tail we add) is not data.
                Status::StreamEnd => return Ok(()),
                _ if progressed => {}
                _ if consumed == input.len() => return Ok(()),
                _ => return Err(InflateError::Corrupt),
            }
        }
    }

    /// Ends the message: feeds the stripped `00 00 ff ff` back, then forgets the message.
    pub fn finish(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> Result<(), InflateError> {
        let result = self.push(&TAIL, out, max_bytes);
        self.reset();
        result
    }

    /// Forgets the message in flight (no context takeover).
    pub fn reset(&mut self) {
        self.decompress.reset(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> Option<Deflate> {
        negotiate([value])
    }

    #[test]
    fn plain_offer_is_accepted_without_context_takeover_either_way() {
        let deflate = offer("permessage-deflate").unwrap();
        assert!(deflate.compresses());
        assert_eq!(
            deflate.response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // What browsers send.
        assert_eq!(
            offer("permessage-deflate; client_max_window_bits"),
            Some(deflate)
        );
        assert_eq!(
            offer("permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10"),
            Some(deflate)
        );
    }

    #[test]
    fn a_smaller_server_window_is_echoed_and_turns_compression_off() {
        let deflate = offer("permessage-deflate; server_max_window_bits=9").unwrap();
        assert!(!deflate.compresses());
        assert!(deflate
            .response_value()
            .ends_with("; server_max_window_bits=9"));
        let full = offer("permessage-deflate; server_max_window_bits=\"15\"").unwrap();
        assert!(full.compresses());
    }

    #[test]
    fn offers_with_what_corecast_cannot_honour_are_declined_for_the_next() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(offer(bad), None, "{bad:?}");
        }
        let second = negotiate([
            "permessage-deflate; mystery, permessage-deflate; server_max_window_bits=12",
            "permessage-deflate",
        ]);
        assert_eq!(
            second,
            Some(Deflate {
                server_window_bits: 12
            })
        );
    }

    #[test]
    fn rfc_7692_hello_example_round_trips() {
        // Section 7.2.3.1: "Hello" compressed without context.
        let mut out = Vec::new();
        compress_into(b"Hello", &mut out);
        let mut inflated = Vec::new();
        let mut inflater = Inflater::default();
        inflater
            .push(
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                &mut inflated,
                100,
            )
            .unwrap();
        inflater.finish(&mut inflated, 100).unwrap();
        assert_eq!(inflated, b"Hello");
        inflated.clear();
        inflater.push(&out, &mut inflated, 100).unwrap();
        inflater.finish(&mut inflated, 100).unwrap();
        assert_eq!(inflated, b"Hello");
    }

    #[test]
    fn large_and_empty_messages_round_trip_in_pieces() {
        let payload: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7) as u8)
            .collect();
        let mut compressed = Vec::new();
        compress_into(&payload, &mut compressed);
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        for piece in compressed.chunks(1000) {
            inflater.push(piece, &mut out, payload.len()).unwrap();
        }
        inflater.finish(&mut out, payload.len()).unwrap();
        assert!(out == payload, "inflated {} bytes", out.len());
        let mut empty = Vec::new();
        compress_into(b"", &mut empty);
        let mut out = Vec::new();
        inflater.push(&empty, &mut out, 0).unwrap();
        inflater.finish(&mut out, 0).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut bomb = Vec::new();
        compress_into(&zeros, &mut bomb);
        assert!(bomb.len() < zeros.len() / 50, "{} bytes", bomb.len());
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        assert_eq!(
            inflater.push(&bomb, &mut out, 65_536),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= 65_536 + INFLATE_STEP_BYTES + 1);
        // Exactly at the limit is fine.
        inflater.reset();
        let mut exact = Vec::new();
        compress_into(&zeros[..65_536], &mut exact);
        let mut out = Vec::new();
        inflater.push(&exact, &mut out, 65_536).unwrap();
        inflater.finish(&mut out, 65_536).unwrap();
        assert_eq!(out.len(), 65_536);
    }

    /// Payloads of every kind and size, into buffers of every starting capacity, round-trip;
    /// this found a compressor loop that stopped before its flush had finished.
    #[test]
    fn any_payload_round_trips_whatever_the_buffer() {
        let mut seed = 1u64;
        for size in [0usize, 16, 255, 4096, 16384, 65536, 131072] {
            let random: Vec<u8> = (0..size)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect();
            let text: Vec<u8> = random
                .iter()
                .map(|byte| b"abcdefgh  \n"[usize::from(*byte % 11)])
                .collect();
            let zeros = vec![0u8; size];
            for payload in [&random, &text, &zeros] {
                for capacity in [0, 3, size / 8, size / 2 + 64] {
                    let mut compressed = Vec::with_capacity(capacity);
                    compress_into(payload, &mut compressed);
                    let mut inflater = Inflater::default();
                    let mut out = Vec::with_capacity(capacity);
                    inflater.push(&compressed, &mut out, size).unwrap();
                    inflater.finish(&mut out, size).unwrap();
                    assert!(out == *payload, "{size} bytes into {capacity}");
                }
            }
        }
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        // BTYPE 11 is reserved.
        assert_eq!(
            inflater.push(&[0xff, 0xff, 0xff], &mut out, 100),
            Err(InflateError::Corrupt)
        );
    }
}
