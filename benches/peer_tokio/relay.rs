//! The tokio peer's server: one tokio runtime (a worker per CPU), one task per connection, a
//! `tokio::sync::broadcast` channel for fan-out.
//!
//! A connection to `/publish` is the publisher: every text message it sends is relayed, as is,
//! to every other connection. Every other path is a subscriber, greeted with the same
//! `{"type":"connected",...}` frame corecast sends so the bench knows it is live. A subscriber
//! that falls more than `BROADCAST_CAPACITY` messages behind loses messages (tokio's `Lagged`),
//! which the bench counts as loss. There are no limits and no protocol checks beyond
//! tungstenite's: that is the point of the comparison.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages the broadcast channel keeps for slow subscribers.
const BROADCAST_CAPACITY: usize = 65_536;

/// Accepts and serves connections on `listener` until the process ends.
pub async fn serve(listener: TcpListener) {
    let (messages, _) = broadcast::channel::<Utf8Bytes>(BROADCAST_CAPACITY);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, messages.clone()));
    }
}

// tungstenite's handshake callback type fixes its error as a whole HTTP response.
#[allow(clippy::result_large_err)]
async fn serve_connection(stream: TcpStream, messages: broadcast::Sender<Utf8Bytes>) {
    let mut path = String::new();
    let upgrade =
        tokio_tungstenite::accept_hdr_async(stream, |request: &Request, response: Response| {
            path = request.uri().path().to_owned();
            Ok(response)
        })
        .await;
    let Ok(ws) = upgrade else { return };
    let (mut sink, mut source) = ws.split();
    if path == "/publish" {
        while let Some(Ok(message)) = source.next().await {
            if let Message::Text(text) = message {
                let _ = messages.send(text);
            }
        }
        return;
    }
    let mut relayed = messages.subscribe();
    let hello =
        r#"{"type":"connected","conn_id":"peer","shard":0,"server_time_ms":0,"heartbeat_s":0}"#;
    if sink.send(Message::text(hello)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            message = relayed.recv() => match message {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = source.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
