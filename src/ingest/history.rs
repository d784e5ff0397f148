//! Every channel's offset and its bounded history, owned by the sequencer on the ingest core.
//!
//! A channel's history is its latest `message` frames, kept as the very `Bytes` the shards were
//! sent (no copy), within its namespace's limits in messages, bytes and age, and within one
//! limit in bytes over all channels (`history_total_bytes_max`): past it, the oldest message of
//! any channel goes first. To find that message at once, [`History`] keeps every non-empty
//! channel's oldest `seq` in an ordered map. Each channel also remembers the highest `offset`
//! and `seq` it trimmed, which is what lets a recovery say exactly whether anything after a
//! client's position is gone.
//!
//! Offsets in a history are contiguous (trimming only takes from the front), and a message's
//! node-wide `seq` grows with its offset, so both lookups are index arithmetic or a binary
//! search. Age is checked lazily: every read trims first, so an expired message is never
//! returned, and memory stays bounded by the byte limits meanwhile.
//!
//! This module must never touch a socket or a shard: it answers with frames, and the
//! sequencer decides where they go.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashMap;

use crate::channel;
use crate::config::{ChannelPolicy, Config};
use crate::queue::{Missed, Position};
use crate::ws::command::Unrecovered;

/// One published message as history keeps it.
struct Stored {
    offset: u64,
    seq: u64,
    /// When it was recorded, for `history_age_s`.
    at: Instant,
    /// The complete WebSocket frame, shared with the shards.
    frame: Bytes,
    /// Where the frame's JSON payload starts, for `/v1/history`.
    payload_start: u8,
}

/// A channel the sequencer has seen: its latest offset, its namespace, its history.
struct Channel {
    offset: u64,
    /// Index into the policies (see [`Config::policy`]).
    policy: usize,
    entries: VecDeque<Stored>,
    bytes: usize,
    /// The highest offset and seq trimmed from this history, 0 when none was.
    trimmed_offset: u64,
    trimmed_seq: u64,
}

impl Channel {
    fn front_seq(&self) -> Option<u64> {
        self.entries.front().map(|stored| stored.seq)
    }
}

/// The byte accounting over all channels, apart from the channels so both can be borrowed.
#[derive(Default)]
struct Totals {
    /// Every non-empty channel by its oldest stored `seq`: the global trim order.
    fronts: BTreeMap<u64, Rc<str>>,
    bytes: usize,
    messages: usize,
}

impl Totals {
    /// Takes `channel`'s oldest message out of its history.
    fn pop_front(&mut self, channel: &mut Channel) {
        let stored = channel
            .entries
            .pop_front()
            .expect("popped a non-empty history");
        channel.bytes -= stored.frame.len();
        channel.trimmed_offset = stored.offset;
        channel.trimmed_seq = stored.seq;
        self.bytes -= stored.frame.len();
        self.messages -= 1;
    }

    /// Trims `channel` to its policy's limits as of `now`, keeping `fronts` current.
    fn trim(
        &mut self,
        name: &Rc<str>,
        channel: &mut Channel,
        policy: &ChannelPolicy,
        now: Instant,
    ) {
        let before = channel.front_seq();
        let age_max = Duration::from_secs(policy.history_age_s);
        while let Some(front) = channel.entries.front() {
            let over = channel.entries.len() > policy.history_messages_max
                || channel.bytes > policy.history_bytes_max
                || now.saturating_duration_since(front.at) > age_max;
            if !over {
                break;
            }
            self.pop_front(channel);
        }
        self.moved_front(name, before, channel.front_seq());
    }

    fn moved_front(&mut self, name: &Rc<str>, before: Option<u64>, after: Option<u64>) {
        if before == after {
            return;
        }
        if let Some(seq) = before {
            self.fronts.remove(&seq);
        }
        if let Some(seq) = after {
            self.fronts.insert(seq, name.clone());
        }
    }
}

/// The sequencer refused to track one more channel (`channels_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelsFull;

/// Why a message numbered by the cluster was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unnumbered {
    ChannelsFull,
    /// Its offset is not past the channel's latest: a message seen already.
    Stale,
}

/// What one publish was assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub offset: u64,
    /// Index into [`History::policy`].
    pub policy: usize,
}

/// A page of one channel's history, for `GET /v1/history`.
pub struct Page {
    /// The channel's latest offset, 0 if nothing was ever published to it.
    pub offset: u64,
    /// False when some message after the asked offset is no longer in history.
    pub complete: bool,
    /// The JSON of each `message`, oldest first.
    pub messages: Vec<Bytes>,
}

/// What a recovery sends: the missed frames in `seq` order, and the `seq` of the client's
/// position (the last message it had), after which the subscription now has everything.
pub struct Recovery {
    pub missed: Vec<Missed>,
    pub since_seq: u64,
}

impl Stored {
    /// This message as a recovery sends it; `full` is its channel's full name.
    fn missed(&self, full: &str) -> Missed {
        let channel_start = usize::from(self.payload_start) + super::encode::PREFIX.len();
        let (tenant, channel) = channel::split_scope(full);
        Missed {
            frame: self.frame.clone(),
            seq: self.seq,
            channel_start: u16::try_from(channel_start).expect("a header is at most 10 bytes"),
            channel_len: u8::try_from(channel.len()).expect("channels are at most 255 bytes"),
            scoped: tenant.map(|_| full.into()),
        }
    }
}

/// The limits one recovery must fit.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryLimits {
    pub messages_max: usize,
    pub bytes_max: usize,
    /// The newest `seq` sequenced: a client cannot have seen past it.
    pub seq_latest: u64,
}

/// Every channel's offset and history.
pub struct History {
    channels: HashMap<Rc<str>, Channel>,
    totals: Totals,
    /// Every namespace's policy, by [`Config::policy_index`].
    policies: Vec<ChannelPolicy>,
    config: Arc<Config>,
    /// Nothing up to this seq is here to recover (see [`History::set_floor`]); 0 on a single
    /// node, which has seen everything of its epoch.
    floor_seq: u64,
}

impl History {
    pub fn new(config: Arc<Config>) -> History {
        History {
            channels: HashMap::new(),
            totals: Totals::default(),
            policies: (0..=config.namespaces.len())
                .map(|index| config.policy(index))
                .collect(),
            config,
            floor_seq: 0,
        }
    }

    /// Channels tracked.
    pub fn channels_len(&self) -> usize {
        self.channels.len()
    }

    /// Messages and bytes held over all channels.
    pub fn held(&self) -> (usize, usize) {
        (self.totals.messages, self.totals.bytes)
    }

    pub fn policy(&self, index: usize) -> &ChannelPolicy {
        &self.policies[index]
    }

    /// The latest offset of `channel`, 0 if it has none.
    pub fn offset(&self, channel: &str) -> u64 {
        self.channels
            .get(channel)
            .map_or(0, |channel| channel.offset)
    }

    /// Gives `channel` its next offset, tracking it from now on if it is new.
    pub fn assign(&mut self, name: &str) -> Result<Assigned, ChannelsFull> {
        if let Some(channel) = self.channels.get_mut(name) {
            channel.offset += 1;
            return Ok(Assigned {
                offset: channel.offset,
                policy: channel.policy,
            });
        }
        if self.channels.len() >= self.config.channels_max {
            return Err(ChannelsFull);
        }
        let policy = self.config.policy_index(channel::visible(name));
        self.channels.insert(
            name.into(),
            Channel {
                offset: 1,
                policy,
                entries: VecDeque::new(),
                bytes: 0,
                trimmed_offset: 0,
                trimmed_seq: 0,
            },
        );
        Ok(Assigned { offset: 1, policy })
    }

    /// Takes an offset the cluster assigned (seq `seq`) as `name`'s latest. Offsets this node
    /// never received (a jump past the latest + 1) are gone from its history: it trims the
    /// channel through them and returns them as `(from, to)` for a `gap` notice.
    pub fn assign_numbered(
        &mut self,
        name: &str,
        offset: u64,
        seq: u64,
    ) -> Result<(Assigned, Option<(u64, u64)>), Unnumbered> {
        let assigned = match self.channels.get(name) {
            Some(channel) if offset <= channel.offset => return Err(Unnumbered::Stale),
            Some(channel) => Assigned {
                offset,
                policy: channel.policy,
            },
            None => {
                self.assign(name)
                    .map_err(|ChannelsFull| Unnumbered::ChannelsFull)?;
                let channel = self.channels.get_mut(name).expect("just tracked");
                channel.offset = 0;
                Assigned {
                    offset,
                    policy: channel.policy,
                }
            }
        };
        let (key, channel) = self.channels.get_key_value_mut(name).expect("tracked");
        let key = key.clone();
        let latest = channel.offset;
        channel.offset = offset;
        if offset == latest + 1 {
            return Ok((assigned, None));
        }
        let before = channel.front_seq();
        while !channel.entries.is_empty() {
            self.totals.pop_front(channel);
        }
        channel.trimmed_offset = offset - 1;
        channel.trimmed_seq = channel.trimmed_seq.max(seq - 1);
        self.totals.moved_front(&key, before, None);
        let gap = (latest > 0).then_some((latest + 1, offset - 1));
        Ok((assigned, gap))
    }

    /// Everything up to `seq` that this history does not hold is past recovering: a node
    /// that joined the cluster late, or whose read of the cluster's log came back short.
    pub fn set_floor(&mut self, seq: u64) {
        self.floor_seq = self.floor_seq.max(seq);
    }

    /// Keeps the frame of `channel`'s latest publish (just assigned `offset`, numbered `seq`),
    /// then trims that channel and, if the total is over its limit, the oldest of any.
    pub fn record(
        &mut self,
        name: &str,
        offset: u64,
        seq: u64,
        frame: Bytes,
        payload_start: u8,
        now: Instant,
    ) {
        let (name, channel) = self
            .channels
            .get_key_value_mut(name)
            .expect("a recorded channel was assigned its offset first");
        assert_eq!(
            channel.offset, offset,
            "history records each offset in order"
        );
        let name = name.clone();
        let before = channel.front_seq();
        self.totals.bytes += frame.len();
        self.totals.messages += 1;
        channel.bytes += frame.len();
        channel.entries.push_back(Stored {
            offset,
            seq,
            at: now,
            frame,
            payload_start,
        });
        self.totals.moved_front(&name, before, channel.front_seq());
        let policy = &self.policies[channel.policy];
        self.totals.trim(&name, channel, policy, now);
        while self.totals.bytes > self.config.history_total_bytes_max {
            let (_, oldest) = self
                .totals
                .fronts
                .first_key_value()
                .expect("bytes are held by some non-empty channel");
            let oldest = oldest.clone();
            let channel = self
                .channels
                .get_mut(&*oldest)
                .expect("fronts name tracked channels");
            let before = channel.front_seq();
            self.totals.pop_front(channel);
            self.totals
                .moved_front(&oldest, before, channel.front_seq());
        }
    }

    /// Trims `name` to its limits as of `now` and returns it.
    fn trimmed(&mut self, name: &str, now: Instant) -> Option<&Channel> {
        let (key, channel) = self.channels.get_key_value_mut(name)?;
        let key = key.clone();
        self.totals
            .trim(&key, channel, &self.policies[channel.policy], now);
        Some(channel)
    }

    /// Up to `limit` messages of `name` after offset `since`, oldest first.
    pub fn page(&mut self, name: &str, since: u64, limit: usize, now: Instant) -> Page {
        let Some(channel) = self.trimmed(name, now) else {
            return Page {
                offset: 0,
                complete: since == 0,
                messages: Vec::new(),
            };
        };
        let first = channel
            .entries
            .partition_point(|stored| stored.offset <= since);
        Page {
            offset: channel.offset,
            complete: channel.trimmed_offset <= since,
            messages: channel
                .entries
                .range(first..)
                .take(limit)
                .map(|stored| stored.frame.slice(usize::from(stored.payload_start)..))
                .collect(),
        }
    }

    /// The messages a subscription to `pattern` missed after `since`, or why they cannot all
    /// be sent. An `Offset` position is for an exact channel only (the parser ensures it).
    pub fn recover(
        &mut self,
        pattern: &str,
        since: Position,
        limits: RecoveryLimits,
        now: Instant,
    ) -> Result<Recovery, Unrecovered> {
        let mut found: Vec<Missed> = Vec::new();
        let since_seq = match since {
            Position::Offset(offset) => {
                let latest = self.offset(pattern);
                if offset > latest && self.floor_seq > 0 && !self.channels.contains_key(pattern) {
                    // A channel this node has not seen since it joined: it may have older
                    // messages than this node knows.
                    return Err(Unrecovered::HistoryTrimmed);
                }
                if offset > latest {
                    return Err(Unrecovered::UnknownPosition);
                }
                match self.trimmed(pattern, now) {
                    Some(channel) => {
                        if channel.trimmed_offset > offset {
                            return Err(Unrecovered::HistoryTrimmed);
                        }
                        let missed = (latest - offset) as usize;
                        if missed > limits.messages_max {
                            return Err(Unrecovered::TooMany);
                        }
                        let first = channel.entries.len() - missed;
                        found.extend(
                            channel
                                .entries
                                .range(first..)
                                .map(|stored| stored.missed(pattern)),
                        );
                        // The client's last message: just before the first missed, or the
                        // last trimmed, or none.
                        match first.checked_sub(1) {
                            Some(at) => channel.entries[at].seq,
                            None if offset == 0 => 0,
                            None => channel.trimmed_seq,
                        }
                    }
                    None => 0,
                }
            }
            Position::Seq(seq) => {
                if seq > limits.seq_latest {
                    return Err(Unrecovered::UnknownPosition);
                }
                if seq < self.floor_seq {
                    return Err(Unrecovered::HistoryTrimmed);
                }
                let names: Vec<Rc<str>> = if channel::is_pattern(pattern) {
                    self.channels
                        .keys()
                        .filter(|name| channel::pattern_matches(pattern, name))
                        .cloned()
                        .collect()
                } else {
                    self.channels
                        .get_key_value(pattern)
                        .map(|(name, _)| name.clone())
                        .into_iter()
                        .collect()
                };
                for name in names {
                    let channel = self.trimmed(&name, now).expect("listed above");
                    if channel.trimmed_seq > seq {
                        return Err(Unrecovered::HistoryTrimmed);
                    }
                    let first = channel.entries.partition_point(|stored| stored.seq <= seq);
                    found.extend(
                        channel
                            .entries
                            .range(first..)
                            .map(|stored| stored.missed(&name)),
                    );
                    if found.len() > limits.messages_max {
                        return Err(Unrecovered::TooMany);
                    }
                }
                found.sort_unstable_by_key(|missed| missed.seq);
                seq
            }
        };
        let bytes: usize = found.iter().map(|missed| missed.frame.len()).sum();
        if bytes > limits.bytes_max {
            return Err(Unrecovered::TooMany);
        }
        Ok(Recovery {
            missed: found,
            since_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Namespace;

    const LIMITS: RecoveryLimits = RecoveryLimits {
        messages_max: 100,
        bytes_max: 1 << 20,
        seq_latest: u64::MAX,
    };

    /// A history fed like the sequencer feeds it; frames spell `channel:offset` (no header).
    struct Fixture {
        history: History,
        seq: u64,
        now: Instant,
    }

    impl Fixture {
        fn new(config: Config) -> Fixture {
            Fixture {
                history: History::new(Arc::new(config)),
                seq: 0,
                now: Instant::now(),
            }
        }

        fn publish(&mut self, channel: &str) -> u64 {
            let assigned = self.history.assign(channel).unwrap();
            self.seq += 1;
            let frame = Bytes::from(format!("{channel}:{}", assigned.offset));
            self.history
                .record(channel, assigned.offset, self.seq, frame, 0, self.now);
            assigned.offset
        }

        fn recover(&mut self, pattern: &str, since: Position) -> Result<Vec<String>, Unrecovered> {
            let limits = RecoveryLimits {
                seq_latest: self.seq,
                ..LIMITS
            };
            let recovery = self.history.recover(pattern, since, limits, self.now)?;
            Ok(recovery
                .missed
                .iter()
                .map(|missed| String::from_utf8(missed.frame.to_vec()).unwrap())
                .collect())
        }
    }

    #[test]
    fn offsets_count_per_channel_and_recovery_by_offset_is_exact() {
        let mut fixture = Fixture::new(Config::default());
        for channel in ["a", "b", "a", "a"] {
            fixture.publish(channel);
        }
        assert_eq!(fixture.history.offset("a"), 3);
        assert_eq!(
            fixture.recover("a", Position::Offset(1)).unwrap(),
            ["a:2", "a:3"]
        );
        assert_eq!(
            fixture.recover("a", Position::Offset(3)).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            fixture.recover("a", Position::Offset(4)),
            Err(Unrecovered::UnknownPosition)
        );
        assert_eq!(
            fixture.recover("never", Position::Offset(0)).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn wildcard_recovery_merges_channels_in_seq_order() {
        let mut fixture = Fixture::new(Config::default());
        for channel in ["l.1", "x", "l.2", "l.1", "l.2.deep", "l.2"] {
            fixture.publish(channel);
        }
        assert_eq!(
            fixture.recover("l.*", Position::Seq(1)).unwrap(),
            ["l.2:1", "l.1:2", "l.2:2"]
        );
        assert_eq!(
            fixture.recover("l.>", Position::Seq(3)).unwrap(),
            ["l.1:2", "l.2.deep:1", "l.2:2"]
        );
        assert_eq!(
            fixture.recover("l.*", Position::Seq(7)),
            Err(Unrecovered::UnknownPosition)
        );
    }

    #[test]
    fn trimming_by_count_makes_older_positions_unrecoverable() {
        let mut fixture = Fixture::new(Config {
            history_messages_max: 2,
            ..Config::default()
        });
        for _ in 0..4 {
            fixture.publish("a");
        }
        fixture.publish("b");
        assert_eq!(
            fixture.recover("a", Position::Offset(1)),
            Err(Unrecovered::HistoryTrimmed)
        );
        assert_eq!(
            fixture.recover("a", Position::Offset(2)).unwrap(),
            ["a:3", "a:4"]
        );
        assert_eq!(
            fixture.recover("*", Position::Seq(1)),
            Err(Unrecovered::HistoryTrimmed)
        );
        assert_eq!(
            fixture.recover("*", Position::Seq(2)).unwrap(),
            ["a:3", "a:4", "b:1"]
        );
        assert_eq!(fixture.history.held(), (3, 9));
    }

    #[test]
    fn namespaces_set_their_own_limits_and_age_trims_on_read() {
        let mut fixture = Fixture::new(Config {
            history_age_s: 60,
            namespaces: vec![Namespace {
                pattern: "keep.>".into(),
                history_messages_max: Some(0),
                history_bytes_max: None,
                history_age_s: None,
                slow_consumer: None,
                conflate_key: None,
            }],
            ..Config::default()
        });
        fixture.publish("keep.x");
        fixture.publish("other");
        assert_eq!(
            fixture.recover("keep.x", Position::Offset(0)),
            Err(Unrecovered::HistoryTrimmed),
            "a namespace without history trims at once"
        );
        assert_eq!(
            fixture.recover("other", Position::Offset(0)).unwrap(),
            ["other:1"]
        );
        fixture.now += Duration::from_secs(61);
        assert_eq!(
            fixture.recover("other", Position::Offset(0)),
            Err(Unrecovered::HistoryTrimmed),
            "expired on read"
        );
        let page = fixture.history.page("other", 0, 10, fixture.now);
        assert_eq!(
            (page.offset, page.complete, page.messages.len()),
            (1, false, 0)
        );
    }

    #[test]
    fn the_total_byte_limit_trims_the_oldest_message_of_any_channel() {
        let mut fixture = Fixture::new(Config {
            history_total_bytes_max: 11,
            ..Config::default()
        });
        fixture.publish("a");
        fixture.publish("b");
        fixture.publish("b");
        fixture.publish("a");
        assert_eq!(fixture.history.held(), (3, 9), "a:1 went first");
        fixture.publish("c");
        assert_eq!(fixture.history.held(), (3, 9), "then b:1");
        assert_eq!(
            fixture.recover("*", Position::Seq(3)).unwrap(),
            ["a:2", "c:1"]
        );
        assert_eq!(
            fixture.recover("b", Position::Offset(0)),
            Err(Unrecovered::HistoryTrimmed)
        );
    }

    #[test]
    fn too_many_missed_messages_say_so() {
        let mut fixture = Fixture::new(Config::default());
        for _ in 0..5 {
            fixture.publish("a");
        }
        let limits = RecoveryLimits {
            messages_max: 4,
            bytes_max: 1 << 20,
            seq_latest: 5,
        };
        let now = fixture.now;
        assert!(matches!(
            fixture
                .history
                .recover("a", Position::Offset(0), limits, now),
            Err(Unrecovered::TooMany)
        ));
        assert!(matches!(
            fixture.history.recover("*", Position::Seq(0), limits, now),
            Err(Unrecovered::TooMany)
        ));
        let limits = RecoveryLimits {
            bytes_max: 5,
            ..limits
        };
        assert!(matches!(
            fixture
                .history
                .recover("a", Position::Offset(3), limits, now),
            Err(Unrecovered::TooMany)
        ));
    }

    #[test]
    fn channels_max_bounds_the_channels_tracked() {
        let mut history = History::new(Arc::new(Config {
            channels_max: 1,
            ..Config::default()
        }));
        assert_eq!(
            history.assign("a"),
            Ok(Assigned {
                offset: 1,
                policy: 0
            })
        );
        assert_eq!(history.assign("b"), Err(ChannelsFull));
        assert_eq!(history.channels_len(), 1);
    }
}
