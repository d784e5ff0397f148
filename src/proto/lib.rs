//! corecast-proto: what corecast's server, its Rust client (`corecast-client`) and its load
//! generator (`corecast-bench`) all speak, defined once.
//!
//! Owns the vocabulary of the wire contract (`PROTOCOL.md`) that more than one of them needs:
//! channel names and patterns, positions in a stream, priorities, error and close codes; the
//! client side of the WebSocket codec that the client and the bench share; and the two host
//! text formats the server, `corecast tune` and the bench all read. It is the bottom layer:
//! it must never depend on the server, the client or the bench, never touch a socket, a clock
//! or a file, and never hold state. Every function is pure over its arguments, so each is
//! tested with literals.
//!
//! # Layout
//! - [`channel`]: channel names and wildcard patterns, the tenant scope of a full name.
//! - [`position`]: [`Since`] and [`Position`], where a recovering subscription resumes.
//! - [`priority`]: [`Priority`], a publish's lane.
//! - [`error`]: [`ErrorCode`], the `code` of an `error` frame.
//! - [`close`]: the close codes, by name.
//! - [`wire`]: the client side of the wire: `ws://`/`wss://` URLs, the upgrade exchange, masked frames.
//! - [`buffer`]: a client's read buffer and the server-frame splitter over it.
//! - [`host`]: CPU lists and the local port range, as text.
//! - `tls` (feature `tls`): the trusted roots and rustls client configuration of `wss://`.
#![forbid(unsafe_code)]

pub mod buffer;
pub mod channel;
pub mod close;
pub mod error;
pub mod host;
pub mod position;
pub mod priority;
#[cfg(feature = "tls")]
pub mod tls;
pub mod wire;

pub use error::ErrorCode;
pub use position::{Position, Since};
pub use priority::Priority;
