//! The close codes of the wire contract (PROTOCOL.md, "Close codes") and of its extensions
//! (README: 1012 for a new epoch, 4001 for an expired token, 4010 for a user disconnected by
//! the server), by name.
//!
//! Owns the numbers only. It never decides when a connection closes, nor with which reason: the
//! server's connection task and the clients do.

/// Normal closure: a client's goodbye, or the server's idle timeout.
pub const NORMAL: u16 = 1000;
/// The server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// A protocol violation: an unmasked client frame, a bad opcode, reserved bits.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Invalid UTF-8 in a text frame.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy: authentication or origin.
pub const POLICY: u16 = 1008;
/// A message over the server's maximum.
pub const TOO_BIG: u16 = 1009;
/// An internal error.
pub const INTERNAL: u16 = 1011;
/// The epoch changed: offsets restarted; resubscribe.
pub const EPOCH_CHANGED: u16 = 1012;
/// The connection's token expired.
pub const TOKEN_EXPIRED: u16 = 4001;
/// A slow consumer: its outbox overflowed.
pub const SLOW_CONSUMER: u16 = 4008;
/// Every connection of a user closed by the control plane (`POST /v1/users/disconnect`);
/// clients should not reconnect on their own.
pub const USER_DISCONNECTED: u16 = 4010;
/// Sustained rate-limit abuse.
pub const RATE_LIMITED: u16 = 4029;
