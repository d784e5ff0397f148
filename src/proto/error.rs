//! The error codes of the wire contract (PROTOCOL.md, "Server -> client") and of cluster mode
//! (README): the `code` of an `error` frame.
//!
//! Owns the names, as their serialized `snake_case`. It never builds a frame and never decides
//! which code an input earns: the server does.

use serde::Serialize;

/// The contract's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidChannel,
    Forbidden,
    NotSubscribed,
    TooManySubscriptions,
    RateLimited,
    Internal,
    /// `presence` for a channel whose namespace has no `presence = true`.
    PresenceDisabled,
    /// Cluster mode: the publish was certainly not published (Redis unreachable or stalled).
    ClusterUnavailable,
    /// Cluster mode: the publish was sent to Redis, which did not answer in time; it may or
    /// may not be published.
    OutcomeUnknown,
}
