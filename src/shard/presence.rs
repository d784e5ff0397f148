//! The shard's presence (PROTOCOL.md, "Presence"): who is subscribed here to each channel of a
//! namespace with `presence = true`, and, for `join_leave` namespaces, the joins and leaves
//! since the shard last told the ingest core.
//!
//! A member is one connection subscribed to the channel by its exact name; a wildcard
//! subscription makes no member (it names no one channel to be present in), though it does
//! receive the channel's diffs, as a subscriber. Whether a channel tracks presence is read from
//! the config once, when a subscription starts; its end, and a connection's close, look the
//! channel up here only when some channel is tracked. Nothing on the fan-out path reads this:
//! ordinary channels pay one namespace match per subscribe and nothing per delivery.
//!
//! Bounds: a channel is tracked while it has a member here or changes not yet sent, so the
//! table holds at most `connections_per_shard_max` x `subscriptions_per_conn_max` members; the
//! changes of one interval hold each connection at most once per channel (a join and a leave
//! of the same connection cancel out), so they are bounded by the same. An answer lists at
//! most `presence_members_max` members.

use std::cell::RefCell;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};

use crate::config::PresenceMode;
use crate::msg::{ConnId, Member, PresenceChange, PresenceCount};

/// One tracked channel on this shard.
struct Channel {
    /// Whether its joins and leaves are gathered for diffs.
    diffs: bool,
    members: HashMap<ConnId, Arc<Member>>,
    /// Joins and leaves since the last [`Presence::take_changes`]; empty without `diffs`.
    joined: HashMap<ConnId, Arc<Member>>,
    left: HashMap<ConnId, Arc<Member>>,
}

impl Channel {
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.joined.is_empty() && self.left.is_empty()
    }
}

/// Every presence channel with a member (or unsent changes) here, by full name.
#[derive(Default)]
pub struct Presence {
    channels: RefCell<HashMap<Arc<str>, Channel>>,
}

impl Presence {
    /// Counts connection `id` in as a member of `channel` (a full name, exact) in a namespace
    /// of `mode` (not `Off`); `member` makes its entry, once.
    pub fn join(
        &self,
        channel: &str,
        mode: PresenceMode,
        id: ConnId,
        member: impl FnOnce() -> Member,
    ) {
        debug_assert_ne!(mode, PresenceMode::Off, "only presence channels are joined");
        let mut channels = self.channels.borrow_mut();
        let tracked = match channels.get_mut(channel) {
            Some(tracked) => tracked,
            None => channels
                .entry(Arc::from(channel))
                .or_insert_with(|| Channel {
                    diffs: mode == PresenceMode::JoinLeave,
                    members: HashMap::new(),
                    joined: HashMap::new(),
                    left: HashMap::new(),
                }),
        };
        if tracked.members.contains_key(&id) {
            return;
        }
        let member = Arc::new(member());
        if tracked.diffs && tracked.left.remove(&id).is_none() {
            tracked.joined.insert(id, member.clone());
        }
        tracked.members.insert(id, member);
    }

    /// Counts connection `id` out of `channel`, if it was a member.
    pub fn leave(&self, channel: &str, id: ConnId) {
        let mut channels = self.channels.borrow_mut();
        if channels.is_empty() {
            return;
        }
        let Some(tracked) = channels.get_mut(channel) else {
            return;
        };
        let Some(member) = tracked.members.remove(&id) else {
            return;
        };
        if tracked.diffs && tracked.joined.remove(&id).is_none() {
            tracked.left.insert(id, member);
        }
        if tracked.is_idle() {
            channels.remove(channel);
        }
    }

    /// Who is a member of `channel` here: the counts, and at most `members_max` members.
    pub fn count(&self, channel: &str, members_max: usize) -> PresenceCount {
        self.channels
            .borrow()
            .get(channel)
            .map(|tracked| count_of(tracked, members_max))
            .unwrap_or_default()
    }

    /// [`Presence::count`] of every channel with a member here.
    pub fn count_all(&self, members_max: usize) -> Vec<(Arc<str>, PresenceCount)> {
        self.channels
            .borrow()
            .iter()
            .filter(|(_, tracked)| !tracked.members.is_empty())
            .map(|(channel, tracked)| (channel.clone(), count_of(tracked, members_max)))
            .collect()
    }

    /// The joins and leaves since the last call, per channel that had any, and forgets the
    /// channels left with neither members nor changes.
    pub fn take_changes(&self) -> Vec<PresenceChange> {
        let mut channels = self.channels.borrow_mut();
        let mut changes = Vec::new();
        for (channel, tracked) in channels.iter_mut() {
            if tracked.joined.is_empty() && tracked.left.is_empty() {
                continue;
            }
            changes.push(PresenceChange {
                channel: channel.clone(),
                joined: tracked.joined.drain().map(|(_, member)| member).collect(),
                left: tracked.left.drain().map(|(_, member)| member).collect(),
            });
        }
        channels.retain(|_, tracked| !tracked.is_idle());
        changes
    }

    /// Channels with a member here, and members over all of them, for `/v1/stats`.
    pub fn figures(&self) -> (usize, usize) {
        let channels = self.channels.borrow();
        let members = channels.values().map(|tracked| tracked.members.len()).sum();
        let live = channels
            .values()
            .filter(|tracked| !tracked.members.is_empty())
            .count();
        (live, members)
    }
}

fn count_of(tracked: &Channel, members_max: usize) -> PresenceCount {
    let users: HashSet<&str> = tracked
        .members
        .values()
        .filter_map(|member| member.user.as_deref())
        .collect();
    PresenceCount {
        connections: tracked.members.len(),
        users: users.into_iter().map(Box::from).collect(),
        members: tracked
            .members
            .values()
            .take(members_max)
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32) -> ConnId {
        ConnId { slot, seq: slot }
    }

    fn member(user: Option<&str>, slot: u32) -> impl FnOnce() -> Member + '_ {
        move || Member {
            user: user.map(Box::from),
            conn_id: format!("0-{slot}").into(),
            info: None,
        }
    }

    fn conn_ids(members: &[Arc<Member>]) -> Vec<&str> {
        let mut ids: Vec<&str> = members.iter().map(|m| &*m.conn_id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn members_are_counted_by_connection_and_users_once_each() {
        let presence = Presence::default();
        presence.join(
            "room.1",
            PresenceMode::Members,
            id(1),
            member(Some("ada"), 1),
        );
        presence.join(
            "room.1",
            PresenceMode::Members,
            id(2),
            member(Some("ada"), 2),
        );
        presence.join("room.1", PresenceMode::Members, id(3), member(None, 3));
        presence.join("room.1", PresenceMode::Members, id(3), member(None, 3));
        let count = presence.count("room.1", 2);
        assert_eq!(count.connections, 3);
        assert_eq!(count.users, [Box::from("ada")]);
        assert_eq!(count.members.len(), 2, "at most members_max");
        assert!(
            presence.take_changes().is_empty(),
            "no diffs without join_leave"
        );
        presence.leave("room.1", id(1));
        presence.leave("room.1", id(9));
        assert_eq!(presence.count("room.1", 10).connections, 2);
        presence.leave("room.1", id(2));
        presence.leave("room.1", id(3));
        assert_eq!(presence.figures(), (0, 0), "an empty channel is forgotten");
    }

    #[test]
    fn a_join_and_a_leave_inside_one_interval_cancel_out() {
        let presence = Presence::default();
        let diffs = PresenceMode::JoinLeave;
        presence.join("room.1", diffs, id(1), member(Some("ada"), 1));
        presence.join("room.1", diffs, id(2), member(Some("bob"), 2));
        presence.leave("room.1", id(2));
        let changes = presence.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(conn_ids(&changes[0].joined), ["0-1"]);
        assert!(changes[0].left.is_empty());
        presence.leave("room.1", id(1));
        presence.join("room.1", diffs, id(3), member(None, 3));
        let changes = presence.take_changes();
        assert_eq!(conn_ids(&changes[0].joined), ["0-3"]);
        assert_eq!(conn_ids(&changes[0].left), ["0-1"]);
        presence.leave("room.1", id(3));
        let changes = presence.take_changes();
        assert_eq!(conn_ids(&changes[0].left), ["0-3"]);
        assert!(presence.take_changes().is_empty());
        assert_eq!(presence.figures(), (0, 0));
    }
}
