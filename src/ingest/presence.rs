//! Presence over every shard (PROTOCOL.md, "Presence"): the answers to `GET /v1/presence`
//! and the `presence` command, and the batched `presence_diff` frames of `join_leave`
//! channels.
//!
//! The members live on the shards (`shard::presence`), each with its own connections. A
//! presence answer asks every shard for the channel (a query, like `/v1/stats`), merges the
//! counts (users by name, so a user with connections on two shards counts once) and lists at
//! most `presence_members_max` members, with `truncated` past it. In cluster mode it adds
//! every other node's entry for the channel from Redis (see [`crate::cluster`]).
//!
//! Diffs: each shard gathers its joins and leaves per channel and sends them here at most once
//! per `presence_diff_interval_ms` ([`crate::msg::ToIngest::PresenceChanges`]); [`Diffs`]
//! merges every shard's (and in cluster mode every other node's, from `{corecast}:presence`)
//! into one pending diff per channel, a join and a leave of the same connection cancelling
//! out. Every interval the ingest core encodes one `presence_diff` frame per channel that
//! changed and hands the same `Bytes` to each shard routed for the channel, which writes it to
//! every subscriber, as a `gap` notice is written. It is not a numbered message: it takes no
//! offset, is kept in no history and is not recovered. So a storm of N joins costs each
//! subscriber one frame per interval (two when a shard's message and the tick fall apart),
//! never N, and the shards send one message per interval each.
//!
//! Bounds: the pending diffs hold each connection at most once per channel (joins and leaves
//! cancel), so at most the members the cluster has; one diff frame lists at most
//! `presence_members_max` joins and leaves together, with `truncated` when there were more
//! (the subscriber then re-reads the members with `presence`). At most
//! [`PRESENCE_ASKS_MAX`] `presence` commands are answered at once; past it they are refused
//! `rate_limited`.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};

use crate::msg::{Answer, Member, PresenceChange, PresenceCount, ShardId};

/// `presence` commands answered at once at most (each asks every shard, and in cluster mode
/// Redis); past it one is refused `rate_limited`, retry later.
pub const PRESENCE_ASKS_MAX: usize = 256;

/// Who is subscribed to one channel, over every shard (and node): the answer's figures.
#[derive(Debug, Default)]
pub struct Totals {
    pub connections: usize,
    pub users: HashSet<Box<str>>,
    pub members: Vec<Arc<Member>>,
    /// More members than `members` lists.
    pub truncated: bool,
}

impl Totals {
    /// Adds one shard's (or node's) count, listing members up to `members_max` in all.
    pub fn add(&mut self, count: PresenceCount, members_max: usize) {
        self.connections += count.connections;
        self.users.extend(count.users);
        let room = members_max.saturating_sub(self.members.len());
        if count.members.len() > room || count.connections > count.members.len() {
            self.truncated = true;
        }
        self.members.extend(count.members.into_iter().take(room));
    }

    /// The totals of every shard's answer to a presence query.
    pub fn of_answers(answers: Vec<(ShardId, Answer)>, members_max: usize) -> Totals {
        let mut totals = Totals::default();
        for (_, answer) in answers {
            if let Answer::Presence(count) = answer {
                totals.add(count, members_max);
            }
        }
        totals
    }
}

/// Whose a pending join or leave is: this node's (`None`) or another node's, with the
/// member's `conn_id` (unique on its node).
type MemberKey = (Option<Arc<str>>, Box<str>);

/// One channel's joins and leaves since the last tick.
#[derive(Default)]
struct Pending {
    joined: HashMap<MemberKey, Arc<Member>>,
    left: HashMap<MemberKey, Arc<Member>>,
}

/// The diffs waiting for the next tick, per channel (full name).
#[derive(Default)]
pub struct Diffs {
    pending: RefCell<HashMap<Arc<str>, Pending>>,
    /// Diff frames sent to shards since start, for `/v1/stats`.
    sent_total: Cell<u64>,
}

/// One channel's diff as a tick takes it.
pub struct Diff {
    pub channel: Arc<str>,
    pub joined: Vec<Arc<Member>>,
    pub left: Vec<Arc<Member>>,
    pub truncated: bool,
}

impl Diffs {
    /// Merges one shard's (`node`: `None`) or another node's changes into the pending diffs.
    pub fn merge(&self, changes: Vec<PresenceChange>, node: Option<&Arc<str>>) {
        let mut pending = self.pending.borrow_mut();
        for change in changes {
            let diff = pending.entry(change.channel).or_default();
            for member in change.joined {
                let key = (node.cloned(), member.conn_id.clone());
                if diff.left.remove(&key).is_none() {
                    diff.joined.insert(key, member);
                }
            }
            for member in change.left {
                let key = (node.cloned(), member.conn_id.clone());
                if diff.joined.remove(&key).is_none() {
                    diff.left.insert(key, member);
                }
            }
        }
    }

    /// Takes every channel's pending diff that is not empty, each cut to `members_max` joins
    /// and leaves together.
    pub fn take(&self, members_max: usize) -> Vec<Diff> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let mut diffs = Vec::with_capacity(pending.len());
        for (channel, diff) in pending {
            if diff.joined.is_empty() && diff.left.is_empty() {
                continue;
            }
            let truncated = diff.joined.len() + diff.left.len() > members_max;
            let joined: Vec<_> = diff.joined.into_values().take(members_max).collect();
            let room = members_max - joined.len();
            let left = diff.left.into_values().take(room).collect();
            diffs.push(Diff {
                channel,
                joined,
                left,
                truncated,
            });
        }
        diffs
    }

    pub fn count_sent(&self, frames: usize) {
        self.sent_total.set(self.sent_total.get() + frames as u64);
    }

    pub fn sent_total(&self) -> u64 {
        self.sent_total.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn_id: &str, user: Option<&str>) -> Arc<Member> {
        Arc::new(Member {
            user: user.map(Box::from),
            conn_id: conn_id.into(),
            info: None,
        })
    }

    fn change(joined: &[&str], left: &[&str]) -> Vec<PresenceChange> {
        vec![PresenceChange {
            channel: "room.1".into(),
            joined: joined.iter().map(|id| member(id, None)).collect(),
            left: left.iter().map(|id| member(id, None)).collect(),
        }]
    }

    fn ids(members: &[Arc<Member>]) -> Vec<&str> {
        let mut ids: Vec<&str> = members.iter().map(|m| &*m.conn_id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn shards_changes_merge_into_one_diff_and_cancel_across_them() {
        let diffs = Diffs::default();
        let other: Arc<str> = "node-b".into();
        diffs.merge(change(&["0-1", "0-2"], &[]), None);
        diffs.merge(change(&["1-1"], &["0-2"]), None);
        diffs.merge(change(&["0-1"], &[]), Some(&other));
        let taken = diffs.take(10);
        assert_eq!(taken.len(), 1);
        assert_eq!(ids(&taken[0].joined), ["0-1", "0-1", "1-1"], "one per node");
        assert!(taken[0].left.is_empty(), "0-2 joined and left: in neither");
        assert!(!taken[0].truncated);
        assert!(diffs.take(10).is_empty(), "taken once");
    }

    #[test]
    fn a_diff_lists_at_most_members_max_and_says_so() {
        let diffs = Diffs::default();
        diffs.merge(change(&["0-1", "0-2", "0-3"], &["0-9"]), None);
        let taken = diffs.take(2);
        assert_eq!(taken[0].joined.len() + taken[0].left.len(), 2);
        assert!(taken[0].truncated);
    }

    #[test]
    fn totals_count_users_once_and_truncate_the_list() {
        let mut totals = Totals::default();
        totals.add(
            PresenceCount {
                connections: 2,
                users: vec!["ada".into()],
                members: vec![member("0-1", Some("ada")), member("0-2", Some("ada"))],
            },
            3,
        );
        totals.add(
            PresenceCount {
                connections: 2,
                users: vec!["ada".into(), "bob".into()],
                members: vec![member("1-1", Some("ada")), member("1-2", Some("bob"))],
            },
            3,
        );
        assert_eq!(totals.connections, 4);
        assert_eq!(totals.users.len(), 2);
        assert_eq!(totals.members.len(), 3);
        assert!(totals.truncated);
    }
}
