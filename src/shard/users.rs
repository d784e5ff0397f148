//! The shard's connections by user: for the control plane's acts on a user (disconnect,
//! server-side subscribe and unsubscribe) and the per-user counts of `/v1/stats`.
//!
//! A user is keyed by the full name of its stream (`$user.ada`, `$t:acme.$user.ada`), which is
//! unique across tenants. The index changes only at a connection's open and close; nothing
//! on the fan-out path reads it (a `$user` delivery finds its connections in the registry, as
//! any channel's does).

use std::cell::RefCell;

use hashbrown::HashMap;

use crate::msg::ConnId;

/// Every connection with a user, by the user's stream.
#[derive(Default)]
pub struct Users {
    by_stream: RefCell<HashMap<Box<str>, Vec<ConnId>>>,
}

impl Users {
    /// Counts `id` in as a connection of the user whose stream is `stream`.
    pub fn add(&self, stream: &str, id: ConnId) {
        let mut by_stream = self.by_stream.borrow_mut();
        match by_stream.get_mut(stream) {
            Some(ids) => ids.push(id),
            None => {
                by_stream.insert(stream.into(), vec![id]);
            }
        }
    }

    /// Counts `id` out; a user without connections is forgotten.
    pub fn remove(&self, stream: &str, id: ConnId) {
        let mut by_stream = self.by_stream.borrow_mut();
        let Some(ids) = by_stream.get_mut(stream) else {
            return;
        };
        ids.retain(|held| *held != id);
        if ids.is_empty() {
            by_stream.remove(stream);
        }
    }

    /// The connections of the user whose stream is `stream` (none for an unknown user).
    pub fn conns(&self, stream: &str) -> Vec<ConnId> {
        self.by_stream
            .borrow()
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }

    /// How many users have a connection here.
    pub fn count(&self) -> usize {
        self.by_stream.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_kept_while_it_has_a_connection() {
        let users = Users::default();
        let id = |slot| ConnId { slot, seq: slot };
        users.add("$user.ada", id(1));
        users.add("$user.ada", id(2));
        users.add("$t:acme.$user.ada", id(3));
        assert_eq!(users.count(), 2);
        assert_eq!(users.conns("$user.ada"), [id(1), id(2)]);
        users.remove("$user.ada", id(1));
        assert_eq!(users.conns("$user.ada"), [id(2)]);
        users.remove("$user.ada", id(2));
        assert!(users.conns("$user.ada").is_empty());
        assert_eq!(users.count(), 1, "an empty user is forgotten");
        users.remove("$user.bob", id(9));
    }
}
