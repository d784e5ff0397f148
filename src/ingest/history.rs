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
//! Channels come and go. One with no history left and no subscriber is forgotten and its slot
//! goes to the next new channel, so `channels_max` bounds the channels live at once, not those
//! ever seen. The sequencer sweeps the table a bounded number of slots at a time
//! ([`History::sweep`]), which also trims expired histories nobody reads, and when a new
//! channel finds the table full it reclaims once more before refusing ([`History::reclaim`]);
//! whether a channel has a subscriber is the caller's to say. A forgotten channel's positions
//! must never pass for a later life's: once a channel with messages was forgotten, a new
//! channel's offsets start at its first message's `seq` rather than 1, with everything before
//! trimmed (a channel's offsets never exceed the seqs of its messages, so every offset of an
//! earlier life is below), and the history keeps the highest seq of any forgotten channel,
//! below which a recovery concerning a channel it does not hold is `history_trimmed`.
//!
//! Each channel lives in a slot of one vector, its name stored there once; a hash table of slot
//! numbers finds it by name, and the ordered map names slots too. `benches/channels.rs`
//! measures what a channel costs.
//!
//! This module must never touch a socket or a shard: it answers with frames, and the
//! sequencer decides where they go.

use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashSet, HashTable};

use crate::channel;
use crate::config::{ChannelPolicy, Config};
use crate::msg::{Missed, Position};
use crate::ws::command::Unrecovered;

/// One published message as history keeps it. Its offset is its place: a channel's stored
/// offsets run on from its `trimmed_offset`.
struct Stored {
    seq: u64,
    /// When it was recorded, in milliseconds since the history's `start`, for `history_age_s`.
    at_ms: u64,
    /// The complete WebSocket frame, shared with the shards.
    frame: Bytes,
    /// Where the frame's JSON payload starts, for `/v1/history`.
    payload_start: u8,
}

/// A channel the sequencer tracks: its name, its namespace, its history.
struct Channel {
    name: Box<str>,
    /// Empty without an allocation: a channel nobody publishes to holds its slot alone.
    entries: VecDeque<Stored>,
    /// The highest offset and seq trimmed from this history (or never kept), 0 when none was.
    /// The channel's latest offset is `trimmed_offset + entries.len()`.
    trimmed_offset: u64,
    trimmed_seq: u64,
    bytes: usize,
    /// Index into the policies (see [`Config::policy`]).
    policy: u16,
}

impl Channel {
    fn offset(&self) -> u64 {
        self.trimmed_offset + self.entries.len() as u64
    }

    fn front_seq(&self) -> Option<u64> {
        self.entries.front().map(|stored| stored.seq)
    }
}

/// The byte accounting over all channels, apart from the channels so both can be borrowed.
#[derive(Default)]
struct Totals {
    /// Every non-empty channel's slot by its oldest stored `seq`: the global trim order.
    fronts: BTreeMap<u64, u32>,
    bytes: usize,
    messages: usize,
}

impl Totals {
    /// Takes `channel`'s oldest message out of its history; an emptied history gives its
    /// memory back.
    fn pop_front(&mut self, channel: &mut Channel) {
        let stored = channel
            .entries
            .pop_front()
            .expect("popped a non-empty history");
        channel.bytes -= stored.frame.len();
        channel.trimmed_offset += 1;
        channel.trimmed_seq = stored.seq;
        self.bytes -= stored.frame.len();
        self.messages -= 1;
        if channel.entries.is_empty() {
            channel.entries = VecDeque::new();
        }
    }

    /// Trims `channel` (in `slot`) to its policy's limits as of `now_ms`, keeping `fronts`
    /// current.
    fn trim(&mut self, slot: u32, channel: &mut Channel, policy: &ChannelPolicy, now_ms: u64) {
        let before = channel.front_seq();
        let age_max_ms = policy.history_age_s.saturating_mul(1_000);
        while let Some(front) = channel.entries.front() {
            let over = channel.entries.len() > policy.history_messages_max
                || channel.bytes > policy.history_bytes_max
                || now_ms.saturating_sub(front.at_ms) > age_max_ms;
            if !over {
                break;
            }
            self.pop_front(channel);
        }
        self.moved_front(slot, before, channel.front_seq());
    }

    fn moved_front(&mut self, slot: u32, before: Option<u64>, after: Option<u64>) {
        if before == after {
            return;
        }
        if let Some(seq) = before {
            self.fronts.remove(&seq);
        }
        if let Some(seq) = after {
            self.fronts.insert(seq, slot);
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

/// The offset one publish takes, and its channel's policy; the publish must be recorded
/// before the channel is assigned its next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub offset: u64,
    /// Index into [`History::policy`].
    pub policy: usize,
}

/// A page of one channel's history, for `GET /v1/history`.
pub struct Page {
    /// The channel's latest offset, 0 if nothing was ever published to it (or it was forgotten).
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
        let channel = channel::visible(full);
        Missed {
            frame: self.frame.clone(),
            seq: self.seq,
            channel_start: u16::try_from(channel_start).expect("a header is at most 10 bytes"),
            channel_len: u8::try_from(channel.len()).expect("channels are at most 255 bytes"),
            scoped: (channel.len() != full.len()).then(|| full.into()),
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
    /// Every tracked channel by slot; a `None` is free and listed in `free`.
    slots: Vec<Option<Channel>>,
    free: Vec<u32>,
    /// The slots of `slots` that hold a channel, found by its name.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    totals: Totals,
    /// Every namespace's policy, by [`Config::policy_index`].
    policies: Vec<ChannelPolicy>,
    config: Arc<Config>,
    /// Nothing up to this seq is here to recover (see [`History::set_floor`]); 0 on a single
    /// node, which has seen everything of its epoch.
    floor_seq: u64,
    /// The highest seq any forgotten channel held, 0 while none with a message was forgotten:
    /// every offset and seq of a forgotten channel is at or below it.
    forgotten_seq: u64,
    /// The slot the next sweep starts at.
    cursor: usize,
    /// A reclaim found nothing to forget since the last sweep: the next one is skipped.
    reclaim_spent: bool,
    /// The zero of every [`Stored::at_ms`].
    start: Instant,
}

impl History {
    pub fn new(config: Arc<Config>) -> History {
        History {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            totals: Totals::default(),
            policies: (0..=config.namespaces.len())
                .map(|index| config.policy(index))
                .collect(),
            config,
            floor_seq: 0,
            forgotten_seq: 0,
            cursor: 0,
            reclaim_spent: false,
            start: Instant::now(),
        }
    }

    /// Channels tracked.
    pub fn channels_len(&self) -> usize {
        self.index.len()
    }

    /// Messages and bytes held over all channels.
    pub fn held(&self) -> (usize, usize) {
        (self.totals.messages, self.totals.bytes)
    }

    pub fn policy(&self, index: usize) -> &ChannelPolicy {
        &self.policies[index]
    }

    fn ms_since_start(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// The slot of `name`, if tracked.
    fn slot_of(&self, name: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(name), |&slot| {
                slots[slot as usize]
                    .as_ref()
                    .is_some_and(|channel| *channel.name == *name)
            })
            .copied()
    }

    fn channel(&self, slot: u32) -> &Channel {
        self.slots[slot as usize]
            .as_ref()
            .expect("indexed slots hold a channel")
    }

    /// Starts tracking `name`, with everything up to `trimmed_offset` and `trimmed_seq` gone.
    fn track(
        &mut self,
        name: &str,
        trimmed_offset: u64,
        trimmed_seq: u64,
    ) -> Result<u32, ChannelsFull> {
        if self.channels_len() >= self.config.channels_max {
            return Err(ChannelsFull);
        }
        let policy = u16::try_from(self.config.policy_index(channel::visible(name)))
            .expect("config validation bounds the namespaces");
        let channel = Channel {
            name: name.into(),
            entries: VecDeque::new(),
            trimmed_offset,
            trimmed_seq,
            bytes: 0,
            policy,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                assert!(self.slots[slot as usize].is_none(), "a free slot is empty");
                self.slots[slot as usize] = Some(channel);
                slot
            }
            None => {
                self.slots.push(Some(channel));
                u32::try_from(self.slots.len() - 1).expect("channels_max fits a u32")
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(name), slot, |&slot| {
                hasher.hash_one(&*slots[slot as usize].as_ref().expect("indexed").name)
            });
        Ok(slot)
    }

    /// Forgets the channel in `slot`, whose history is empty.
    fn forget(&mut self, slot: u32) {
        let channel = self.slots[slot as usize]
            .take()
            .expect("a forgotten slot held a channel");
        assert!(
            channel.entries.is_empty(),
            "only a channel with no history is forgotten"
        );
        self.index
            .find_entry(self.hasher.hash_one(&*channel.name), |&at| at == slot)
            .expect("a tracked channel is indexed")
            .remove();
        self.free.push(slot);
        self.forgotten_seq = self.forgotten_seq.max(channel.trimmed_seq);
    }

    /// The latest offset of `channel`, 0 if it has none.
    pub fn offset(&self, channel: &str) -> u64 {
        self.slot_of(channel)
            .map_or(0, |slot| self.channel(slot).offset())
    }

    /// The next offset of `name`, whose message will be numbered `seq`, tracking `name` from
    /// now on if it is new. The message must be recorded before the channel's next assign.
    /// Once a channel with messages was forgotten, a new channel's offsets start at `seq`.
    pub fn assign(&mut self, name: &str, seq: u64) -> Result<Assigned, ChannelsFull> {
        if let Some(slot) = self.slot_of(name) {
            let channel = self.channel(slot);
            return Ok(Assigned {
                offset: channel.offset() + 1,
                policy: usize::from(channel.policy),
            });
        }
        let (trimmed_offset, trimmed_seq) = if self.forgotten_seq == 0 {
            (0, 0)
        } else {
            assert!(seq > self.forgotten_seq, "seqs only grow");
            // Every offset an earlier life of `name` had is at most `forgotten_seq`, below
            // `seq`; and nothing of it is here after `forgotten_seq`.
            (seq - 1, self.forgotten_seq)
        };
        let slot = self.track(name, trimmed_offset, trimmed_seq)?;
        Ok(Assigned {
            offset: trimmed_offset + 1,
            policy: usize::from(self.channel(slot).policy),
        })
    }

    /// How many slots a batch publishing to `names` needs: its distinct channels not tracked.
    pub fn untracked<'a>(&self, names: impl Iterator<Item = &'a str>) -> usize {
        let mut new: HashSet<&str> = HashSet::new();
        for name in names {
            if self.slot_of(name).is_none() {
                new.insert(name);
            }
        }
        new.len()
    }

    /// Slots free under `channels_max`.
    pub fn slots_free(&self) -> usize {
        self.config.channels_max.saturating_sub(self.channels_len())
    }

    /// Takes an offset the cluster assigned (seq `seq`) as `name`'s next. Offsets this node
    /// never received (a jump past the latest + 1) are gone from its history: it trims the
    /// channel through them and returns them as `(from, to)` for a `gap` notice. A channel new
    /// here (or forgotten and back) takes the cluster's offset as it is, with everything
    /// before it trimmed.
    pub fn assign_numbered(
        &mut self,
        name: &str,
        offset: u64,
        seq: u64,
    ) -> Result<(Assigned, Option<(u64, u64)>), Unnumbered> {
        let Some(slot) = self.slot_of(name) else {
            let trimmed_seq = if offset > 1 { seq - 1 } else { 0 };
            let slot = self
                .track(name, offset.saturating_sub(1), trimmed_seq)
                .map_err(|ChannelsFull| Unnumbered::ChannelsFull)?;
            let assigned = Assigned {
                offset,
                policy: usize::from(self.channel(slot).policy),
            };
            return Ok((assigned, None));
        };
        let channel = self.slots[slot as usize].as_mut().expect("indexed");
        let latest = channel.offset();
        if offset <= latest {
            return Err(Unnumbered::Stale);
        }
        let assigned = Assigned {
            offset,
            policy: usize::from(channel.policy),
        };
        if offset == latest + 1 {
            return Ok((assigned, None));
        }
        let before = channel.front_seq();
        while !channel.entries.is_empty() {
            self.totals.pop_front(channel);
        }
        channel.trimmed_offset = offset - 1;
        channel.trimmed_seq = channel.trimmed_seq.max(seq - 1);
        self.totals.moved_front(slot, before, None);
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
        let now_ms = self.ms_since_start(now);
        let slot = self
            .slot_of(name)
            .expect("a recorded channel was assigned its offset first");
        let channel = self.slots[slot as usize].as_mut().expect("indexed");
        assert_eq!(
            channel.offset() + 1,
            offset,
            "history records each offset in order"
        );
        let policy = &self.policies[usize::from(channel.policy)];
        if policy.history_messages_max == 0 {
            // A namespace without history: the message is trimmed as it comes.
            assert!(channel.entries.is_empty(), "nothing is kept here");
            channel.trimmed_offset = offset;
            channel.trimmed_seq = seq;
            return;
        }
        let before = channel.front_seq();
        self.totals.bytes += frame.len();
        self.totals.messages += 1;
        channel.bytes += frame.len();
        if channel.entries.capacity() == 0 {
            // One message costs one entry, not the four a first push would allocate.
            channel.entries.reserve_exact(1);
        }
        channel.entries.push_back(Stored {
            seq,
            at_ms: now_ms,
            frame,
            payload_start,
        });
        self.totals.moved_front(slot, before, channel.front_seq());
        self.totals.trim(slot, channel, policy, now_ms);
        while self.totals.bytes > self.config.history_total_bytes_max {
            let (_, &oldest) = self
                .totals
                .fronts
                .first_key_value()
                .expect("bytes are held by some non-empty channel");
            let channel = self.slots[oldest as usize]
                .as_mut()
                .expect("fronts name tracked channels");
            let before = channel.front_seq();
            self.totals.pop_front(channel);
            self.totals.moved_front(oldest, before, channel.front_seq());
        }
    }

    /// Examines up to `max` slots from where the last sweep stopped, in a circle: trims each
    /// channel's history to its limits as of `now` and forgets each left with no history and,
    /// as `subscribed` says, no subscriber. Returns how many it forgot.
    pub fn sweep(
        &mut self,
        max: usize,
        now: Instant,
        subscribed: impl FnMut(&str) -> bool,
    ) -> usize {
        self.reclaim_spent = false;
        self.examine(max, now, subscribed)
    }

    /// For a new channel that found the table full: [`History::sweep`]s once, unless a reclaim
    /// since the last sweep found nothing, so that refusals in a row cost one sweep's worth
    /// per sweep interval, not one each. Returns how many channels it forgot.
    pub fn reclaim(
        &mut self,
        max: usize,
        now: Instant,
        subscribed: impl FnMut(&str) -> bool,
    ) -> usize {
        if self.reclaim_spent {
            return 0;
        }
        let forgotten = self.examine(max, now, subscribed);
        self.reclaim_spent = forgotten == 0;
        forgotten
    }

    fn examine(
        &mut self,
        max: usize,
        now: Instant,
        mut subscribed: impl FnMut(&str) -> bool,
    ) -> usize {
        let now_ms = self.ms_since_start(now);
        let mut forgotten = 0;
        for _ in 0..max.min(self.slots.len()) {
            if self.cursor >= self.slots.len() {
                self.cursor = 0;
            }
            let slot = u32::try_from(self.cursor).expect("channels_max fits a u32");
            self.cursor += 1;
            let Some(channel) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            let policy = &self.policies[usize::from(channel.policy)];
            self.totals.trim(slot, channel, policy, now_ms);
            if channel.entries.is_empty() && !subscribed(&channel.name) {
                self.forget(slot);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// Trims `name` to its limits as of `now` and returns it.
    fn trimmed(&mut self, name: &str, now: Instant) -> Option<&Channel> {
        let now_ms = self.ms_since_start(now);
        let slot = self.slot_of(name)?;
        let channel = self.slots[slot as usize].as_mut().expect("indexed");
        self.totals.trim(
            slot,
            channel,
            &self.policies[usize::from(channel.policy)],
            now_ms,
        );
        Some(channel)
    }

    /// Up to `limit` messages of `name` after offset `since`, oldest first.
    pub fn page(&mut self, name: &str, since: u64, limit: usize, now: Instant) -> Page {
        let forgot_any = self.forgotten_seq > 0;
        let Some(channel) = self.trimmed(name, now) else {
            return Page {
                offset: 0,
                // Once channels were forgotten, this one may have been one of them.
                complete: since == 0 && !forgot_any,
                messages: Vec::new(),
            };
        };
        let first = usize::try_from(since.saturating_sub(channel.trimmed_offset))
            .unwrap_or(usize::MAX)
            .min(channel.entries.len());
        Page {
            offset: channel.offset(),
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
                let (floor_seq, forgotten_seq) = (self.floor_seq, self.forgotten_seq);
                let Some(channel) = self.trimmed(pattern, now) else {
                    if forgotten_seq > 0 && offset <= forgotten_seq {
                        // Perhaps a position in a forgotten channel: what followed it is gone.
                        return Err(Unrecovered::HistoryTrimmed);
                    }
                    if offset > 0 && floor_seq > 0 {
                        // A channel this node has not seen since it joined: it may have older
                        // messages than this node knows.
                        return Err(Unrecovered::HistoryTrimmed);
                    }
                    if offset > 0 {
                        return Err(Unrecovered::UnknownPosition);
                    }
                    return Ok(Recovery {
                        missed: found,
                        since_seq: 0,
                    });
                };
                let latest = channel.offset();
                if offset > latest {
                    return Err(Unrecovered::UnknownPosition);
                }
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
                // The client's last message: just before the first missed, or the last
                // trimmed, or none.
                match first.checked_sub(1) {
                    Some(at) => channel.entries[at].seq,
                    None if offset == 0 => 0,
                    None => channel.trimmed_seq,
                }
            }
            Position::Seq(seq) => {
                if seq > limits.seq_latest {
                    return Err(Unrecovered::UnknownPosition);
                }
                if seq < self.floor_seq {
                    return Err(Unrecovered::HistoryTrimmed);
                }
                let slots: Vec<u32> = if channel::is_pattern(pattern) {
                    (0..self.slots.len())
                        .filter(|&slot| {
                            self.slots[slot].as_ref().is_some_and(|channel| {
                                channel::pattern_matches(pattern, &channel.name)
                            })
                        })
                        .map(|slot| u32::try_from(slot).expect("channels_max fits a u32"))
                        .collect()
                } else {
                    self.slot_of(pattern).into_iter().collect()
                };
                // A tracked exact channel's own trimmed seq covers any earlier life of it
                // (see `assign`); a pattern, or a channel not tracked, may match a forgotten one.
                let exact_tracked = !channel::is_pattern(pattern) && !slots.is_empty();
                if !exact_tracked && seq < self.forgotten_seq {
                    return Err(Unrecovered::HistoryTrimmed);
                }
                let now_ms = self.ms_since_start(now);
                for slot in slots {
                    let channel = self.slots[slot as usize].as_mut().expect("listed above");
                    let policy = &self.policies[usize::from(channel.policy)];
                    self.totals.trim(slot, channel, policy, now_ms);
                    if channel.trimmed_seq > seq {
                        return Err(Unrecovered::HistoryTrimmed);
                    }
                    let first = channel.entries.partition_point(|stored| stored.seq <= seq);
                    found.extend(
                        channel
                            .entries
                            .range(first..)
                            .map(|stored| stored.missed(&channel.name)),
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
    use std::time::Duration;

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
            let assigned = self.history.assign(channel, self.seq + 1).unwrap();
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
                presence: false,
                join_leave: false,
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
            history.assign("a", 1),
            Ok(Assigned {
                offset: 1,
                policy: 0
            })
        );
        assert_eq!(history.assign("b", 1), Err(ChannelsFull));
        assert_eq!(history.channels_len(), 1);
    }

    /// A fixture with `channels_max` and a 60 s history, and the instant its histories expire.
    fn expiring(channels_max: usize) -> (Fixture, Instant) {
        let fixture = Fixture::new(Config {
            channels_max,
            history_age_s: 60,
            ..Config::default()
        });
        let expired = fixture.now + Duration::from_secs(61);
        (fixture, expired)
    }

    #[test]
    fn an_expired_channel_without_subscribers_is_forgotten_and_its_slot_reused() {
        let (mut fixture, expired) = expiring(2);
        fixture.publish("a");
        fixture.publish("b");
        assert_eq!(fixture.history.assign("c", 3), Err(ChannelsFull));
        assert_eq!(
            fixture.history.sweep(10, fixture.now, |_| false),
            0,
            "both still hold history"
        );
        assert_eq!(fixture.history.sweep(10, expired, |_| false), 2);
        assert_eq!(fixture.history.channels_len(), 0);
        assert_eq!(fixture.history.held(), (0, 0));
        fixture.now = expired;
        assert_eq!(
            fixture.publish("c"),
            3,
            "once a channel with messages was forgotten, a new one starts at its seq"
        );
        assert_eq!(fixture.publish("c"), 4);
        assert_eq!(fixture.publish("a"), 5, "a again: a new life, past the old");
        assert_eq!(fixture.history.slots.len(), 2, "the two slots were reused");
        assert_eq!(fixture.history.assign("d", 6), Err(ChannelsFull));
    }

    #[test]
    fn a_channel_with_a_subscriber_or_history_left_is_kept() {
        let (mut fixture, expired) = expiring(10);
        fixture.publish("routed");
        fixture.publish("routed");
        fixture.publish("young");
        fixture.now = expired;
        fixture.publish("young");
        let forgotten = fixture.history.sweep(10, expired, |name| name == "routed");
        assert_eq!(forgotten, 0, "one has a subscriber, the other history left");
        assert_eq!(fixture.history.channels_len(), 2);
        assert_eq!(
            fixture.publish("routed"),
            3,
            "its offsets continue, though its history expired"
        );
        assert_eq!(
            fixture.recover("routed", Position::Offset(1)),
            Err(Unrecovered::HistoryTrimmed)
        );
        assert_eq!(
            fixture.recover("routed", Position::Offset(2)).unwrap(),
            ["routed:3"]
        );
    }

    #[test]
    fn nothing_forgotten_keeps_offsets_from_one_and_recoveries_as_they_were() {
        let (mut fixture, expired) = expiring(10);
        fixture.history.assign("quiet", 1).unwrap();
        assert_eq!(
            fixture.history.sweep(10, expired, |_| false),
            1,
            "a channel that never kept a message is forgotten too"
        );
        assert_eq!(fixture.publish("x"), 1, "it had no offsets to tell apart");
        assert_eq!(
            fixture.recover("never", Position::Offset(0)).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(fixture.recover("*", Position::Seq(0)).unwrap(), ["x:1"]);
        let page = fixture.history.page("never", 0, 10, fixture.now);
        assert_eq!((page.offset, page.complete), (0, true));
    }

    #[test]
    fn a_forgotten_channel_is_recovered_as_trimmed_by_offset_and_by_seq() {
        let (mut fixture, expired) = expiring(10);
        fixture.publish("x"); // seq 1, offset 1
        fixture.publish("y"); // seq 2
        fixture.publish("x"); // seq 3, offset 2
        assert_eq!(fixture.history.sweep(10, expired, |_| false), 2);
        fixture.now = expired;
        for offset in [0, 1, 2, 3] {
            assert_eq!(
                fixture.recover("x", Position::Offset(offset)),
                Err(Unrecovered::HistoryTrimmed),
                "offset {offset}: at or below the highest seq of a forgotten channel"
            );
        }
        assert_eq!(
            fixture.recover("x", Position::Offset(4)),
            Err(Unrecovered::UnknownPosition),
            "past every forgotten offset: never reached"
        );
        assert_eq!(
            fixture.recover("x", Position::Seq(2)),
            Err(Unrecovered::HistoryTrimmed)
        );
        assert_eq!(
            fixture.recover("*", Position::Seq(2)),
            Err(Unrecovered::HistoryTrimmed)
        );
        assert_eq!(
            fixture.recover("x", Position::Seq(3)).unwrap(),
            Vec::<String>::new(),
            "a client that had seq 3 had all of them"
        );
        let page = fixture.history.page("x", 2, 10, fixture.now);
        assert_eq!((page.offset, page.complete), (0, false));
    }

    #[test]
    fn a_recreated_channel_never_continues_its_forgotten_offsets() {
        let (mut fixture, expired) = expiring(10);
        fixture.publish("x"); // seq 1, offset 1
        fixture.publish("y"); // seq 2
        fixture.publish("x"); // seq 3, offset 2
        assert_eq!(fixture.history.sweep(10, expired, |_| false), 2);
        fixture.now = expired;
        assert_eq!(fixture.publish("x"), 4, "seq 4: a new life from offset 4");
        for offset in [0, 1, 2] {
            assert_eq!(
                fixture.recover("x", Position::Offset(offset)),
                Err(Unrecovered::HistoryTrimmed),
                "offset {offset} of the old life is not followed by the new one's"
            );
        }
        assert_eq!(
            fixture.recover("x", Position::Offset(4)).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            fixture.recover("x", Position::Offset(5)),
            Err(Unrecovered::UnknownPosition)
        );
        assert_eq!(
            fixture.recover("x", Position::Seq(2)),
            Err(Unrecovered::HistoryTrimmed),
            "the old life's seq 3 came after"
        );
        assert_eq!(fixture.recover("x", Position::Seq(3)).unwrap(), ["x:4"]);
        assert_eq!(fixture.publish("z"), 5, "seq 5");
        assert_eq!(
            fixture.recover("*", Position::Seq(3)).unwrap(),
            ["x:4", "z:5"],
            "a channel created since is recoverable from the forgotten floor on"
        );
        assert_eq!(
            fixture.recover("*", Position::Seq(2)),
            Err(Unrecovered::HistoryTrimmed)
        );
        let page = fixture.history.page("x", 0, 10, fixture.now);
        assert_eq!(
            (page.offset, page.complete, page.messages.len()),
            (4, false, 1)
        );
        let page = fixture.history.page("x", 3, 10, fixture.now);
        assert_eq!(
            (page.offset, page.complete, page.messages.len()),
            (4, true, 1)
        );
    }

    #[test]
    fn a_forgotten_channel_back_from_the_cluster_takes_its_offsets() {
        let (mut fixture, expired) = expiring(10);
        let numbered = |history: &mut History, offset, seq, now| {
            let (assigned, gap) = history.assign_numbered("x", offset, seq).unwrap();
            assert_eq!((assigned.offset, gap), (offset, None));
            let frame = Bytes::from(format!("x:{offset}"));
            history.record("x", offset, seq, frame, 0, now);
        };
        numbered(&mut fixture.history, 1, 1, fixture.now);
        numbered(&mut fixture.history, 2, 5, fixture.now);
        assert_eq!(fixture.history.sweep(10, expired, |_| false), 1);
        fixture.now = expired;
        fixture.seq = 9;
        numbered(&mut fixture.history, 3, 9, expired);
        assert_eq!(
            fixture.history.offset("x"),
            3,
            "Redis's offsets, as they come"
        );
        assert_eq!(
            fixture.recover("x", Position::Offset(1)),
            Err(Unrecovered::HistoryTrimmed)
        );
        assert_eq!(
            fixture.recover("x", Position::Offset(2)).unwrap(),
            ["x:3"],
            "the cluster's offsets run on: a client at 2 missed only 3"
        );
        assert_eq!(
            fixture.recover("x", Position::Seq(5)),
            Err(Unrecovered::HistoryTrimmed),
            "this node cannot tell what came between seq 5 and 9"
        );
        assert_eq!(fixture.recover("x", Position::Seq(8)).unwrap(), ["x:3"]);
        assert_eq!(
            fixture.recover("*", Position::Seq(4)),
            Err(Unrecovered::HistoryTrimmed),
            "below the forgotten floor, 5"
        );
    }

    #[test]
    fn the_sweep_examines_at_most_its_bound_of_slots_a_call() {
        let (mut fixture, expired) = expiring(100);
        for at in 0..10 {
            fixture.publish(&format!("c{at}"));
        }
        let mut asked = Vec::new();
        let mut sweep = |history: &mut History| {
            let mut asked_now = 0;
            let forgotten = history.sweep(4, expired, |_| {
                asked_now += 1;
                false
            });
            asked.push(asked_now);
            forgotten
        };
        let forgotten: Vec<usize> = (0..4).map(|_| sweep(&mut fixture.history)).collect();
        assert_eq!(forgotten, [4, 4, 2, 0], "four slots a call, in a circle");
        assert_eq!(asked, [4, 4, 2, 0], "one question per channel examined");
        assert_eq!(fixture.history.channels_len(), 0);
    }

    #[test]
    fn a_reclaim_that_found_nothing_waits_for_the_next_sweep() {
        let (mut fixture, expired) = expiring(2);
        fixture.publish("a");
        fixture.publish("b");
        let asked = std::cell::Cell::new(0);
        let subscribed = |_: &str| {
            asked.set(asked.get() + 1);
            true
        };
        assert_eq!(fixture.history.reclaim(10, expired, subscribed), 0);
        assert_eq!(fixture.history.reclaim(10, expired, subscribed), 0);
        assert_eq!(
            asked.get(),
            2,
            "the second refusal in a row examined nothing"
        );
        assert_eq!(fixture.history.sweep(10, expired, subscribed), 0);
        assert_eq!(fixture.history.reclaim(10, expired, subscribed), 0);
        assert_eq!(asked.get(), 6, "a sweep, then one reclaim again");
        assert_eq!(fixture.history.reclaim(10, expired, |_| false), 0);
        assert_eq!(
            fixture.history.sweep(10, expired, |_| false),
            2,
            "the sweep runs whatever the reclaims found"
        );
        assert_eq!(fixture.history.reclaim(10, expired, |_| false), 0);
    }

    #[test]
    fn a_batch_needs_a_slot_per_distinct_new_channel() {
        let (mut fixture, _) = expiring(3);
        fixture.publish("a");
        let names = ["a", "b", "b", "c", "a"];
        assert_eq!(fixture.history.untracked(names.into_iter()), 2);
        assert_eq!(fixture.history.slots_free(), 2);
        fixture.publish("d");
        assert_eq!(fixture.history.slots_free(), 1);
    }

    #[test]
    fn an_empty_history_holds_no_allocation_and_one_message_holds_one_entry() {
        let (mut fixture, expired) = expiring(10);
        fixture.publish("a");
        assert_eq!(capacity_of(&fixture.history, "a"), 1);
        fixture.publish("a");
        assert_eq!(capacity_of(&fixture.history, "a"), 4);
        assert_eq!(fixture.history.sweep(10, expired, |_| true), 0);
        assert_eq!(
            capacity_of(&fixture.history, "a"),
            0,
            "expired, trimmed by the sweep"
        );
        let mut none = Fixture::new(Config {
            history_messages_max: 0,
            ..Config::default()
        });
        none.publish("n");
        assert_eq!(none.publish("n"), 2);
        assert_eq!(none.history.held(), (0, 0));
        assert_eq!(
            capacity_of(&none.history, "n"),
            0,
            "a namespace without history keeps nothing"
        );
    }

    fn capacity_of(history: &History, name: &str) -> usize {
        history
            .channel(history.slot_of(name).unwrap())
            .entries
            .capacity()
    }
}
