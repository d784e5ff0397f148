//! Where a message sits in a stream, and where a recovering client asks to resume: the `since`
//! of a `subscribe` (README, "Delivery guarantees").
//!
//! Owns the shape of a position once it is checked: the server reads `since` into a [`Since`]
//! (rejecting an `offset` on a pattern), the sequencer answers it, and the Rust client asks
//! for one with `subscribe_since`. It never parses JSON and never decides what a position
//! means for history: the server's command parser and its sequencer do.

/// Where a recovering client was: its epoch and the last position it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub epoch: Box<str>,
    pub position: Position,
}

/// A position in the stream: a channel's `offset` (exact channels) or the node-wide `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Offset(u64),
    Seq(u64),
}
