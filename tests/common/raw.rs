//! Hand-built bytes for what client libraries refuse to send: an upgrade request written by hand,
//! frames masked or not with any header bits, and a minimal parser of what the server sends back
//! (HTTP responses and unmasked server frames), and a strict reader of a server's stream to its
//! end that fails on a frame cut short, on bytes after a close frame, and on text that is no JSON.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::STEP;

pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The sample key of RFC 6455 section 1.3 and the accept value it must produce.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The masking key of every client frame built here.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame header declaring `len` payload bytes. `first` is FIN | RSV bits | opcode.
pub fn frame_header(first: u8, len: usize, masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
    }
    out
}

/// A whole client frame, masked as RFC 6455 requires of clients.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(first, payload.len(), true);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A whole frame without a mask: a protocol violation when a client sends it.
pub fn unmasked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(first, payload.len(), false);
    out.extend_from_slice(payload);
    out
}

/// The upgrade request a browser would send for `path`.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame in a line, for failure messages: header fields, length, and the payload's
    /// first and last bytes (a message may be megabytes long).
    pub fn summary(&self) -> String {
        let payload = &self.payload;
        let text = if payload.len() <= 96 {
            String::from_utf8_lossy(payload).to_string()
        } else {
            format!(
                "{} .. {}",
                String::from_utf8_lossy(&payload[..32]),
                String::from_utf8_lossy(&payload[payload.len() - 64..])
            )
        };
        format!(
            "opcode {:#x} fin {} rsv {} with {} bytes: {text:?}",
            self.opcode,
            self.fin,
            self.rsv,
            payload.len()
        )
    }

    /// Code and reason of a close frame (1005 when it carries no code).
    pub fn close_code(&self) -> (u16, String) {
        assert_eq!(
            self.opcode, OP_CLOSE,
            "expected a close frame, got {self:?}"
        );
        if self.payload.is_empty() {
            return (1005, String::new());
        }
        assert!(
            self.payload.len() >= 2,
            "expected a 2-byte close code, got {self:?}"
        );
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec())
            .unwrap_or_else(|_| panic!("expected a UTF-8 close reason in {self:?}"));
        (code, reason)
    }
}

/// Parses one server frame off the front of `buf`, or `None` if more bytes are needed.
pub fn parse_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let (first, second) = (buf[0], buf[1]);
    assert_eq!(
        second & 0x80,
        0,
        "expected server frames to be unmasked (RFC 6455 5.1)"
    );
    let (len, header) = match second & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        len => (len as usize, 2),
    };
    if buf.len() < header + len {
        return None;
    }
    let payload = buf[header..header + len].to_vec();
    buf.drain(..header + len);
    Some(Frame {
        fin: first & 0x80 != 0,
        rsv: (first >> 4) & 0x7,
        opcode: first & 0x0f,
        payload,
    })
}

/// Reads a whole HTTP response head plus its body off `stream`. Bytes past the response stay in
/// `buf`.
pub async fn read_http_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> HttpResponse {
    let head_end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        let read = read_some(stream, buf, STEP).await;
        assert!(
            read.is_some_and(|n| n > 0),
            "expected an HTTP response head, the socket ended after {:?}",
            String::from_utf8_lossy(buf)
        );
    };
    let head = String::from_utf8(buf[..head_end].to_vec())
        .unwrap_or_else(|_| panic!("expected an ASCII response head, got {buf:?}"));
    buf.drain(..head_end);
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("expected an HTTP status line, got {head:?}"));
    let response = HttpResponse {
        status,
        head,
        body: Vec::new(),
    };
    let body = if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().expect("a numeric content-length");
        while buf.len() < len {
            let read = read_some(stream, buf, STEP).await;
            assert!(read.is_some_and(|n| n > 0), "expected {len} body bytes");
        }
        buf.drain(..len).collect()
    } else if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        read_chunked(stream, buf).await
    } else if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else {
        // Close-delimited.
        while read_some(stream, buf, STEP).await.is_some_and(|n| n > 0) {}
        std::mem::take(buf)
    };
    HttpResponse { body, ..response }
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = find(buf, b"\r\n") {
                break at;
            }
            let read = read_some(stream, buf, STEP).await;
            assert!(read.is_some_and(|n| n > 0), "expected a chunk size line");
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("expected a hex chunk size, got {size_text:?}"));
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            let read = read_some(stream, buf, STEP).await;
            assert!(read.is_some_and(|n| n > 0), "expected {size} chunk bytes");
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
        if size == 0 {
            return body;
        }
    }
}

/// Reads once into `buf`: `Some(n)` bytes (0 at EOF), `None` when the socket errored (a reset).
/// Panics if nothing at all happens within `within`.
pub async fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    within: Duration,
) -> Option<usize> {
    tokio::time::timeout(within, read_some_or_end(stream, buf))
        .await
        .unwrap_or_else(|_| {
            panic!("expected the server to send bytes or close the socket within {within:?}")
        })
}

/// Reads once into `buf` without a bound: `Some(n)` bytes (0 at EOF), `None` on a reset.
pub async fn read_some_or_end(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(n)
        }
        Err(_) => None,
    }
}

/// Reads until the peer closes (EOF or reset), returning every byte read. Panics if the socket is
/// still open after `within`: the server was expected to close it.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + within;
    let mut all = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "expected the server to close the socket within {within:?} (read {} bytes, still open)",
                all.len()
            ),
        }
    }
}

/// A server's stream read to its end by [`read_strictly`].
#[derive(Debug)]
pub struct Ending {
    /// Every complete frame in order, each well formed (unmasked, no RSV bits, a known opcode,
    /// final, control frames of at most 125 bytes, text frames complete JSON); a close frame, if
    /// any, is the last, and nothing followed it.
    pub frames: Vec<Frame>,
    /// The bytes of a frame the stream ended inside; empty when it ended between frames.
    pub cut: Vec<u8>,
    /// How the stream ended: `None` at EOF, else the read error (a reset; for TLS, a TCP end
    /// without `close_notify`).
    pub error: Option<std::io::ErrorKind>,
}

impl Ending {
    /// The close frame's code and reason, if the stream ended with one.
    pub fn close(&self) -> Option<(u16, String)> {
        self.frames
            .last()
            .filter(|frame| frame.opcode == OP_CLOSE)
            .map(Frame::close_code)
    }

    /// The JSON of every text frame, in order.
    pub fn texts(&self) -> Vec<Value> {
        self.frames
            .iter()
            .filter(|frame| frame.opcode == OP_TEXT)
            .map(|frame| serde_json::from_slice(&frame.payload).expect("checked when read"))
            .collect()
    }
}

/// Reads `stream` (after the bytes already in `buf`) until the server ends it, parsing frames as
/// they come and failing on anything but whole, well-formed frames (see [`Ending`]). A close
/// frame is answered with the same code, as a client does, so that the server ends the TCP
/// connection at once; any byte after it fails. A frame cut by the end of the stream is returned
/// in [`Ending::cut`] for the caller to judge. Panics if the stream is still open after `within`.
pub async fn read_strictly<S>(stream: &mut S, mut buf: Vec<u8>, within: Duration) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut frames: Vec<Frame> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let closed = frames.last().is_some_and(|frame| frame.opcode == OP_CLOSE);
        if closed {
            assert!(
                buf.is_empty(),
                "expected nothing after the close frame {}, got {} more bytes: {:?}",
                frames.last().map(Frame::summary).unwrap_or_default(),
                buf.len(),
                &buf[..buf.len().min(64)]
            );
        } else if let Some(frame) = parse_frame(&mut buf) {
            check_well_formed(&frame, frames.len());
            if frame.opcode == OP_CLOSE {
                let answer = frame.payload.get(..2).unwrap_or_default().to_vec();
                // The server may have ended the connection already: a failed answer is fine.
                let _ = stream.write_all(&masked(FIN | OP_CLOSE, &answer)).await;
            }
            frames.push(frame);
            continue;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let error = match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => None,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Ok(Err(err)) => Some(err.kind()),
            Err(_) => panic!(
                "expected the server to end the stream within {within:?}; still open after {} \
                 frames (last {}) and {} bytes of the next",
                frames.len(),
                frames.last().map(Frame::summary).unwrap_or_default(),
                buf.len()
            ),
        };
        return Ending {
            frames,
            cut: buf,
            error,
        };
    }
}

/// Fails unless `frame` (the `index`th of its stream) is one this server may send.
fn check_well_formed(frame: &Frame, index: usize) {
    assert_eq!(
        frame.rsv,
        0,
        "frame {index}: expected no RSV bits in {}",
        frame.summary()
    );
    assert!(
        frame.fin,
        "frame {index}: expected unfragmented frames, got {}",
        frame.summary()
    );
    match frame.opcode {
        OP_TEXT => {
            if let Err(err) = serde_json::from_slice::<Value>(&frame.payload) {
                panic!(
                    "frame {index}: expected a text frame of complete JSON ({err}), got {}",
                    frame.summary()
                );
            }
        }
        OP_CLOSE | OP_PING | OP_PONG => assert!(
            frame.payload.len() <= 125,
            "frame {index}: expected a control frame of at most 125 bytes, got {}",
            frame.summary()
        ),
        OP_BINARY => {}
        _ => panic!(
            "frame {index}: expected a known opcode, got {}",
            frame.summary()
        ),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP response read off a raw socket.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Status line and headers, up to and including the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Connects, writes `request` as is, and reads one HTTP response.
pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> (HttpResponse, TcpStream) {
    let mut stream = connect(addr).await;
    stream
        .write_all(request)
        .await
        .expect("expected to write the request");
    let mut buf = Vec::new();
    let response = read_http_response(&mut stream, &mut buf).await;
    (response, stream)
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("expected to connect to {addr} within {STEP:?}"))
        .unwrap_or_else(|err| panic!("expected to connect to {addr}: {err}"))
}

/// A TCP connection whose receive buffer (SO_RCVBUF) and segment size (TCP_MAXSEG) are set
/// before connecting; see [`RawWs::connect_ready_small_window`].
pub fn connect_small_window(
    addr: SocketAddr,
    recv_buffer_bytes: usize,
    segment_bytes: u32,
) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("a TCP socket");
    socket
        .set_recv_buffer_size(recv_buffer_bytes)
        .expect("expected to set SO_RCVBUF");
    socket
        .set_tcp_mss(segment_bytes)
        .expect("expected to set TCP_MAXSEG");
    // A blocking connect: on loopback it completes at once.
    socket
        .connect(&addr.into())
        .unwrap_or_else(|err| panic!("expected to connect to {addr}: {err}"));
    socket.set_nonblocking(true).expect("a non-blocking socket");
    TcpStream::from_std(socket.into()).expect("a tokio stream")
}

/// A WebSocket connection driven byte by byte.
pub struct RawWs {
    pub stream: TcpStream,
    /// Received bytes not yet parsed into frames.
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Performs the upgrade by hand on `path`, asserting 101 and the RFC 6455 accept value.
    /// The `connected` frame is left unread.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let stream = connect(addr).await;
        RawWs::upgrade(stream, addr, path).await
    }

    /// Like [`RawWs::connect_ready`], over a socket whose receive buffer is fixed at about
    /// `recv_buffer_bytes` (set before connecting, which also stops the kernel from growing it):
    /// a client that stops reading then backs up into the server within a few KiB.
    pub async fn connect_ready_small_buffer(addr: SocketAddr, recv_buffer_bytes: u32) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .set_recv_buffer_size(recv_buffer_bytes)
            .expect("expected to set SO_RCVBUF");
        let stream = tokio::time::timeout(STEP, socket.connect(addr))
            .await
            .unwrap_or_else(|_| panic!("expected to connect to {addr} within {STEP:?}"))
            .unwrap_or_else(|err| panic!("expected to connect to {addr}: {err}"));
        let mut raw = RawWs::upgrade(stream, addr, "/ws").await;
        let hello = raw.next_json().await;
        super::assert_connected_shape(&hello);
        raw
    }

    /// Like [`RawWs::connect_ready_small_buffer`], also asking for segments of at most
    /// `segment_bytes` (TCP_MAXSEG, before connecting). The server's kernel sizes its send buffer
    /// by the segment size, so a stalled client then backs up into the server after about
    /// 100 KB instead of the few MB loopback's 64 KB segments buffer: many stalled clients stay
    /// cheap, and a few large messages leave each with a frame half written.
    pub async fn connect_ready_small_window(
        addr: SocketAddr,
        recv_buffer_bytes: usize,
        segment_bytes: u32,
    ) -> RawWs {
        let stream = connect_small_window(addr, recv_buffer_bytes, segment_bytes);
        let mut raw = RawWs::upgrade(stream, addr, "/ws").await;
        let hello = raw.next_json().await;
        super::assert_connected_shape(&hello);
        raw
    }

    /// Like [`RawWs::connect`], offering the extensions in `extensions` (the value of a
    /// `Sec-WebSocket-Extensions` header); returns the 101 response too, to read what was agreed.
    pub async fn connect_offering(
        addr: SocketAddr,
        path: &str,
        extensions: &str,
    ) -> (RawWs, HttpResponse) {
        let stream = connect(addr).await;
        let extra = format!("Sec-WebSocket-Extensions: {extensions}\r\n");
        RawWs::upgrade_with(stream, addr, path, &extra).await
    }

    async fn upgrade(stream: TcpStream, addr: SocketAddr, path: &str) -> RawWs {
        RawWs::upgrade_with(stream, addr, path, "").await.0
    }

    async fn upgrade_with(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        extra_headers: &str,
    ) -> (RawWs, HttpResponse) {
        let request = upgrade_request(addr, path);
        let request = format!(
            "{}{extra_headers}\r\n",
            request
                .strip_suffix("\r\n")
                .expect("a request ends with an empty line")
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("expected to write the upgrade request");
        let mut buf = Vec::new();
        let response = read_http_response(&mut stream, &mut buf).await;
        assert_eq!(
            response.status, 101,
            "expected 101 Switching Protocols, got {response:?}"
        );
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(SAMPLE_ACCEPT),
            "expected the RFC 6455 accept value for the sample key in {response:?}"
        );
        assert!(
            response
                .header("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "expected `Upgrade: websocket` in {response:?}"
        );
        assert!(
            response
                .header("connection")
                .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
            "expected `Connection: Upgrade` in {response:?}"
        );
        (RawWs { stream, buf }, response)
    }

    /// Upgrades and reads the `connected` frame, checking its shape.
    pub async fn connect_ready(addr: SocketAddr) -> RawWs {
        let mut raw = RawWs::connect(addr, "/ws").await;
        let hello = raw.next_json().await;
        super::assert_connected_shape(&hello);
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|_| panic!("expected to write {} bytes within {STEP:?}", bytes.len()))
            .unwrap_or_else(|err| panic!("expected to write {} bytes: {err}", bytes.len()));
    }

    /// Writes bytes the server may refuse half way (it may close first): errors are ignored.
    pub async fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(STEP, self.stream.write_all(bytes)).await;
    }

    /// Writes bytes unless the socket fails or stays full for a short while; returns whether
    /// they went (a flooding client uses it to stop once the server stops reading it).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_millis(200), self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Sends one masked, final text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send(&masked(FIN | OP_TEXT, text.as_bytes())).await;
    }

    /// The next whole frame, or `None` when the socket ended (EOF or reset) first.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = parse_frame(&mut self.buf) {
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match read_some(&mut self.stream, &mut self.buf, left).await {
                Some(0) | None => return None,
                Some(_) => {}
            }
        }
    }

    /// The next text frame as JSON, skipping control frames other than close.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let frame = self
                .next_frame(STEP)
                .await
                .expect("expected a text frame, the socket ended");
            match frame.opcode {
                OP_PING | OP_PONG => continue,
                OP_TEXT => {
                    assert!(frame.fin, "expected unfragmented server text frames");
                    return serde_json::from_slice(&frame.payload).unwrap_or_else(|err| {
                        panic!("expected a JSON text frame, got {frame:?}: {err}")
                    });
                }
                _ => panic!("expected a text frame, got {frame:?}"),
            }
        }
    }

    /// Reads frames until a close frame and returns its code and reason; data and control frames
    /// before it are skipped. Panics if the socket ends without one.
    pub async fn expect_close(&mut self, within: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(frame) if frame.opcode == OP_CLOSE => return frame.close_code(),
                Some(_) => continue,
                None => panic!("expected a close frame before the socket ended"),
            }
        }
    }

    /// Reads the rest of the stream strictly (see [`read_strictly`]), bytes already buffered
    /// first.
    pub async fn read_strictly(&mut self, within: Duration) -> Ending {
        let buf = std::mem::take(&mut self.buf);
        read_strictly(&mut self.stream, buf, within).await
    }

    /// After a close frame: the server must close the TCP connection within `within`.
    pub async fn expect_socket_closed(&mut self, within: Duration) {
        read_until_closed(&mut self.stream, within).await;
    }
}
