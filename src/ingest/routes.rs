//! The ingest core's routes: which shards have a subscriber to which patterns.
//!
//! Shards announce their interest by pattern (their first subscriber to it arrives, their last
//! one leaves), and the ingest core routes each channel with the same [`Registry`] the shards
//! use, keyed by shard. This owns that registry and the scratch space of the publish path, so
//! that routing a publish allocates nothing; it never sends to a shard itself.

use std::cell::RefCell;

use crate::msg::ShardId;
use crate::registry::Registry;

/// Patterns to the shards that announced them.
#[derive(Default)]
pub(crate) struct Routes {
    registry: RefCell<Registry<ShardId>>,
    /// The publish path's matches, kept between publishes so their room is reused (see
    /// [`Routes::take_matches`]).
    matched: RefCell<Vec<ShardId>>,
}

impl Routes {
    /// `shard` has a subscriber to `pattern` now.
    pub(super) fn insert(&self, pattern: &str, shard: ShardId) {
        self.registry.borrow_mut().insert(pattern, shard);
    }

    /// `shard`'s last subscriber to `pattern` left.
    pub(super) fn remove(&self, pattern: &str, shard: ShardId) {
        self.registry.borrow_mut().remove(pattern, shard);
    }

    /// The shards with a subscriber to `channel`, in the publish path's reused room: hand it
    /// back with [`Routes::give_back`] once sent to.
    pub(super) fn take_matches(&self, channel: &str) -> Vec<ShardId> {
        let mut matched = std::mem::take(&mut *self.matched.borrow_mut());
        self.registry
            .borrow()
            .collect_matches(channel, &mut matched);
        matched
    }

    /// Keeps the room of what [`Routes::take_matches`] returned for the next publish.
    pub(super) fn give_back(&self, matched: Vec<ShardId>) {
        *self.matched.borrow_mut() = matched;
    }

    /// The shards with a subscriber to `channel`, in a new `Vec` (off the publish path).
    pub(super) fn routed(&self, channel: &str) -> Vec<ShardId> {
        let mut matched = Vec::new();
        self.registry
            .borrow()
            .collect_matches(channel, &mut matched);
        matched
    }

    /// Whether some shard has a subscriber to a channel, for the sweeps of the channel table;
    /// holds the routes until dropped.
    pub(super) fn subscribed(&self) -> impl FnMut(&str) -> bool + '_ {
        let registry = self.registry.borrow();
        let mut matched = Vec::new();
        move |channel| {
            matched.clear();
            registry.collect_matches(channel, &mut matched);
            !matched.is_empty()
        }
    }
}
