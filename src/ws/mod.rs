//! The WebSocket stage: frames, messages, commands and the connection that ties them to a socket.
//!
//! `frame`, `message`, `deflate` and `command` are pure codecs over bytes (tungstenite does the
//! frame header arithmetic); `rate` is the inbound rate limit, pure over the times it is given;
//! `outbox` is the bounded send queue; `conn` is the only part that touches a socket, one
//! glommio task per connection, owned by the shard that accepted it.

pub mod command;
pub mod conn;
pub mod deflate;
pub mod frame;
pub mod message;
pub mod outbox;
pub mod rate;
