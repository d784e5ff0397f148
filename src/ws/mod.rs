//! The WebSocket stage: frames, messages, commands, and one connection's protocol, all pure.
//!
//! `frame`, `message`, `deflate` and `command` are codecs over bytes (tungstenite does the frame
//! header arithmetic); `rate` is the inbound rate limit, pure over the times it is given;
//! `outbox` is the bounded send queue; `session` is a connection's protocol state machine, handed
//! the bytes its connection read. Nothing here touches a socket, a timer or a shard: the task
//! that owns a connection's socket is its shard's (`shard::conn`).

pub mod command;
pub mod deflate;
pub mod frame;
pub mod message;
pub mod outbox;
pub mod rate;
pub mod session;
