//! A connection's bounded queue of encoded frames waiting for the socket, and the
//! slow-consumer policies that act on it.
//!
//! The outbox holds `Bytes` only (shared with every other connection that gets the same frame)
//! and enforces both limits, in frames and in bytes. It never blocks and never grows past its
//! limits: a push that would overflow is refused, and the caller closes the connection with
//! 4008, so one slow client costs nobody else anything. It also knows how much of its front
//! frame the socket has already taken, which is what lets a writer coalesce frames into one
//! write and resume after a partial one.
//!
//! Each queued `message` frame keeps its channel and offset, so that while a client is behind:
//! - a `critical` message overtakes queued `high`/`normal` messages of *other* channels (never
//!   a reply, a notice or a message of its own channel, so every channel stays in order);
//! - `drop_oldest` replaces a channel's queued messages with one `gap` notice;
//! - `conflate` replaces a queued message with a newer one of the same conflation key.
//!
//! Critical messages are never dropped or conflated, and nothing is ever taken out of a frame
//! the socket has started on.
//!
//! That last rule holds for closes too. A frame the socket took part of, here or by the shard's
//! direct write ([`Outbox::push_started`] queues the rest of one), is the started front; a close
//! that drops what is queued keeps its unwritten tail ([`Outbox::drop_unstarted`]), so the close
//! frame queued next follows a whole frame: never bytes inside a frame the peer is still reading.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::msg::Slow;
use crate::ws::command;

/// The outbox refused a frame: the connection is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// What a policy took out of the outbox to queue a message, for the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shed {
    /// Messages dropped for `drop_oldest` (the newcomer included when it went too).
    pub dropped: usize,
    /// Messages replaced by a newer one of the same key.
    pub conflated: usize,
}

/// What a queued frame is, for the policies above.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A reply, a control frame or recovered history: a barrier nothing overtakes or drops.
    Control,
    Message {
        /// The channel's name: a slice of the frame itself, so no copy.
        channel: Bytes,
        offset: u64,
        critical: bool,
        slow: Slow,
    },
    /// A `gap` notice still open to growing: it stands for `channel`'s offsets `from..=to`.
    Gap { channel: Bytes, from: u64, to: u64 },
}

#[derive(Debug)]
struct Entry {
    frame: Bytes,
    kind: Kind,
}

/// Frames queued for one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    /// Bytes of all queued frames not yet written (the front one's written part excluded).
    bytes: usize,
    /// Bytes of the front frame already written to the socket.
    front_written: usize,
}

impl Outbox {
    /// Queues `frame` at the back, unless that would pass `frames_max` or `bytes_max`.
    pub fn push(
        &mut self,
        frame: Bytes,
        kind: Kind,
        frames_max: usize,
        bytes_max: usize,
    ) -> Result<(), Overflow> {
        if !self.has_room(frame.len(), frames_max, bytes_max) {
            return Err(Overflow);
        }
        self.bytes += frame.len();
        self.entries.push_back(Entry { frame, kind });
        Ok(())
    }

    /// Queues a frame past the limits: for the close frame, the last one, and for recovered
    /// history, whose size the ingest core bounded already.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.entries.push_back(Entry {
            frame,
            kind: Kind::Control,
        });
    }

    /// Queues the rest of a frame whose first `written_bytes` the socket already took, outside
    /// the outbox (the shard's direct write to an empty outbox): it becomes the started front.
    /// Past the limits, like the close frame: the peer has the frame's head, so the tail must
    /// follow it whole, and it is a slice of a frame held anyway, one at most per outbox.
    pub fn push_started(&mut self, frame: Bytes, written_bytes: usize) {
        assert!(
            self.entries.is_empty(),
            "a direct write only goes out when nothing is queued ahead of it"
        );
        assert!(
            0 < written_bytes && written_bytes < frame.len(),
            "a started frame has a written head and an unwritten tail"
        );
        self.bytes += frame.len() - written_bytes;
        self.front_written = written_bytes;
        self.entries.push_back(Entry {
            frame,
            kind: Kind::Control,
        });
    }

    fn has_room(&self, frame_bytes: usize, frames_max: usize, bytes_max: usize) -> bool {
        self.entries.len() < frames_max && self.bytes + frame_bytes <= bytes_max
    }

    /// Queues a message under its channel's policy and priority; `Err` means the connection
    /// must be closed as a slow consumer (the policy could not make room).
    pub fn push_message(
        &mut self,
        frame: Bytes,
        kind: Kind,
        frames_max: usize,
        bytes_max: usize,
    ) -> Result<Shed, Overflow> {
        let Kind::Message {
            channel,
            offset,
            critical,
            slow,
        } = &kind
        else {
            return self
                .push(frame, kind, frames_max, bytes_max)
                .map(|()| Shed::default());
        };
        if *critical {
            if !self.has_room(frame.len(), frames_max, bytes_max) {
                return Err(Overflow);
            }
            let at = self.critical_slot(channel);
            self.bytes += frame.len();
            self.entries.insert(at, Entry { frame, kind });
            return Ok(Shed::default());
        }
        let mut shed = Shed::default();
        if let Slow::Conflate(Some(key)) = slow {
            shed.conflated = usize::from(self.conflate(channel, *key));
        }
        if self.has_room(frame.len(), frames_max, bytes_max) {
            return self.push(frame, kind, frames_max, bytes_max).map(|()| shed);
        }
        match slow {
            Slow::DropOldest => {
                let (channel, offset) = (channel.clone(), *offset);
                shed.dropped =
                    self.drop_oldest(frame, kind, &channel, offset, frames_max, bytes_max)?;
                Ok(shed)
            }
            Slow::Disconnect | Slow::Conflate(_) => Err(Overflow),
        }
    }

    /// Where a critical message of `channel` goes: right after the last entry it must not
    /// overtake (the started front frame, a barrier, a critical message, its own channel).
    fn critical_slot(&self, channel: &[u8]) -> usize {
        let first_movable = usize::from(self.front_written > 0);
        self.entries
            .iter()
            .enumerate()
            .skip(first_movable)
            .rev()
            .find(|(_, entry)| match &entry.kind {
                Kind::Message {
                    channel: queued,
                    critical,
                    ..
                } => *critical || queued[..] == *channel,
                Kind::Control | Kind::Gap { .. } => true,
            })
            .map_or(first_movable, |(at, _)| at + 1)
    }

    /// Removes the unstarted, non-critical message of `channel` whose conflation key is `key`;
    /// returns whether there was one.
    fn conflate(&mut self, channel: &[u8], key: u64) -> bool {
        let first_movable = usize::from(self.front_written > 0);
        let found = self.entries.iter().skip(first_movable).position(|entry| {
            matches!(&entry.kind, Kind::Message {
                channel: queued,
                critical: false,
                slow: Slow::Conflate(Some(queued_key)),
                ..
            } if *queued_key == key && queued[..] == *channel)
        });
        let Some(at) = found else {
            return false;
        };
        let entry = self
            .entries
            .remove(first_movable + at)
            .expect("found above");
        self.bytes -= entry.frame.len();
        true
    }

    /// `drop_oldest` on overflow: the channel's queued messages since its last critical one
    /// (or open gap notice) make way, and one `gap` notice names what was dropped: grown in
    /// place if one is open, else queued at the back. Then `frame` is queued, or it too is
    /// dropped into the notice when the rest of the outbox leaves no room. Returns the
    /// messages dropped, `frame` included if it was.
    fn drop_oldest(
        &mut self,
        frame: Bytes,
        kind: Kind,
        channel: &Bytes,
        offset: u64,
        frames_max: usize,
        bytes_max: usize,
    ) -> Result<usize, Overflow> {
        let first_movable = usize::from(self.front_written > 0);
        // Messages of the channel at or before the last entry that must stay keep their place.
        let keep_until = self
            .entries
            .iter()
            .enumerate()
            .rev()
            .find(|(at, entry)| {
                *at < first_movable
                    || match &entry.kind {
                        Kind::Message {
                            channel: queued,
                            critical,
                            ..
                        } => *critical && queued == channel,
                        Kind::Gap {
                            channel: queued, ..
                        } => queued == channel,
                        Kind::Control => false,
                    }
            })
            .map_or(0, |(at, _)| at + 1);
        let mut dropped: Option<(u64, u64)> = None;
        let mut dropped_count = 0;
        let mut at = keep_until;
        while at < self.entries.len() {
            let is_ours = matches!(&self.entries[at].kind,
                Kind::Message { channel: queued, .. } if queued == channel);
            if !is_ours {
                at += 1;
                continue;
            }
            let entry = self.entries.remove(at).expect("in range");
            self.bytes -= entry.frame.len();
            if let Kind::Message { offset, .. } = entry.kind {
                dropped = Some(dropped.map_or((offset, offset), |(from, _)| (from, offset)));
                dropped_count += 1;
            }
        }
        let open_gap = keep_until.checked_sub(1).filter(|&at| {
            at >= first_movable
                && matches!(&self.entries[at].kind,
                    Kind::Gap { channel: queued, .. } if queued == channel)
        });
        let fits = |outbox: &Outbox, extra_frames: usize, extra_bytes: usize| {
            outbox.entries.len() + extra_frames < frames_max
                && outbox.bytes + extra_bytes + frame.len() <= bytes_max
        };
        match (open_gap, dropped) {
            (Some(at), _) => {
                let to = if fits(self, 0, 0) { offset - 1 } else { offset };
                self.grow_gap(at, to);
                if to == offset {
                    return Ok(dropped_count + 1);
                }
            }
            (None, Some((from, to))) => {
                let notice = command::gap_frame(channel_str(channel), from, to);
                if !fits(self, 1, notice.len()) {
                    let notice = command::gap_frame(channel_str(channel), from, offset);
                    self.push_gap(notice, channel, from, offset, frames_max, bytes_max)?;
                    return Ok(dropped_count + 1);
                }
                self.push_gap(notice, channel, from, to, frames_max, bytes_max)?;
            }
            (None, None) => {
                // Nothing of this channel to drop: the outbox is full of other channels'
                // frames, so this message is dropped and a notice takes its place.
                let notice = command::gap_frame(channel_str(channel), offset, offset);
                self.push_gap(notice, channel, offset, offset, frames_max, bytes_max)?;
                return Ok(1);
            }
        }
        self.push(frame, kind, frames_max, bytes_max)?;
        Ok(dropped_count)
    }

    fn push_gap(
        &mut self,
        notice: Bytes,
        channel: &Bytes,
        from: u64,
        to: u64,
        frames_max: usize,
        bytes_max: usize,
    ) -> Result<(), Overflow> {
        let kind = Kind::Gap {
            channel: channel.clone(),
            from,
            to,
        };
        self.push(notice, kind, frames_max, bytes_max)
    }

    /// Makes the open gap notice at `at` cover offsets up to `to`.
    fn grow_gap(&mut self, at: usize, to: u64) {
        let entry = &mut self.entries[at];
        let Kind::Gap {
            channel,
            from,
            to: old_to,
        } = &mut entry.kind
        else {
            unreachable!("grow_gap is called on a gap notice");
        };
        *old_to = to;
        let notice = command::gap_frame(channel_str(channel), *from, to);
        self.bytes = self.bytes - entry.frame.len() + notice.len();
        entry.frame = notice;
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn frames_len(&self) -> usize {
        self.entries.len()
    }

    pub fn bytes_len(&self) -> usize {
        self.bytes
    }

    /// The unwritten part of the front frame, if any.
    pub fn front(&self) -> Option<&[u8]> {
        self.entries
            .front()
            .map(|entry| &entry.frame[self.front_written..])
    }

    /// The unwritten part of the front frame as a slice of it, if any: to write it uncopied
    /// after the outbox's borrow ends.
    pub fn front_frame(&self) -> Option<Bytes> {
        self.entries
            .front()
            .map(|entry| entry.frame.slice(self.front_written..))
    }

    /// Appends the unwritten bytes of queued frames to `out`, in order, stopping before the
    /// frame that would append more than `bytes_max` (but always taking at least the first).
    pub fn gather(&self, out: &mut Vec<u8>, bytes_max: usize) {
        let start = out.len();
        for (i, entry) in self.entries.iter().enumerate() {
            let part = if i == 0 {
                &entry.frame[self.front_written..]
            } else {
                &entry.frame[..]
            };
            if i > 0 && out.len() - start + part.len() > bytes_max {
                break;
            }
            out.extend_from_slice(part);
        }
    }

    /// Records that the socket took `written_bytes` from the front; returns the whole frames
    /// that finished.
    pub fn advance(&mut self, mut written_bytes: usize) -> usize {
        let mut frames_done = 0;
        while written_bytes > 0 {
            let front = self
                .entries
                .front()
                .expect("cannot write more than was queued");
            let left = front.frame.len() - self.front_written;
            if written_bytes < left {
                self.front_written += written_bytes;
                self.bytes -= written_bytes;
                break;
            }
            written_bytes -= left;
            self.bytes -= left;
            self.front_written = 0;
            self.entries.pop_front();
            frames_done += 1;
        }
        if self.entries.is_empty() {
            // An idle connection holds no queue: most of them only ever queue their greeting.
            self.entries = VecDeque::new();
        }
        frames_done
    }

    /// Drops every frame the socket has not started on, for a close that discards what is
    /// queued: a started front frame stays, its unwritten tail exactly, so that whatever is
    /// queued next (the close frame) follows a whole frame. Returns the frames dropped; the
    /// kept one is not among them, and counts as written once its tail is.
    pub fn drop_unstarted(&mut self) -> usize {
        let kept = usize::from(self.front_written > 0);
        let dropped = self.entries.len() - kept;
        for entry in self.entries.drain(kept..) {
            self.bytes -= entry.frame.len();
        }
        dropped
    }
}

/// A channel name taken from a frame: validated ASCII by the ingest core.
fn channel_str(channel: &Bytes) -> &str {
    std::str::from_utf8(channel).expect("channel names are validated ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> Kind {
        Kind::Control
    }

    /// A message frame whose bytes spell `channel:offset`, so tests can read the queue back.
    fn message(channel: &'static str, offset: u64, critical: bool, slow: Slow) -> (Bytes, Kind) {
        let frame = Bytes::from(format!("{channel}:{offset};"));
        let kind = Kind::Message {
            channel: Bytes::from_static(channel.as_bytes()),
            offset,
            critical,
            slow,
        };
        (frame, kind)
    }

    #[test]
    fn a_drained_outbox_gives_its_memory_back() {
        let mut outbox = Outbox::default();
        outbox
            .push(Bytes::from_static(b"hello"), control(), 8, 1024)
            .unwrap();
        assert!(outbox.entries.capacity() > 0);
        assert_eq!(outbox.advance(2), 0, "part of the frame");
        assert!(outbox.entries.capacity() > 0, "kept while a frame is left");
        assert_eq!(outbox.advance(3), 1);
        assert_eq!(
            outbox.entries.capacity(),
            0,
            "an idle connection holds no queue"
        );
    }

    /// The queue as text: frames as written, gap notices as `gap(channel,from,to);`.
    fn queued(outbox: &Outbox) -> String {
        let mut text = String::new();
        for (at, entry) in outbox.entries.iter().enumerate() {
            let skip = if at == 0 { outbox.front_written } else { 0 };
            match &entry.kind {
                Kind::Gap { channel, from, to } => {
                    text += &format!("gap({},{from},{to});", channel_str(channel))
                }
                _ => text += std::str::from_utf8(&entry.frame[skip..]).unwrap(),
            }
        }
        text
    }

    /// What the queue's byte count must be: every frame, less the started front's written part.
    fn frame_bytes(outbox: &Outbox) -> usize {
        let all: usize = outbox.entries.iter().map(|entry| entry.frame.len()).sum();
        all - outbox.front_written
    }

    #[test]
    fn limits_in_frames_and_bytes_refuse_without_queueing() {
        let mut outbox = Outbox::default();
        let frame = Bytes::from_static(b"0123456789");
        assert_eq!(outbox.push(frame.clone(), control(), 2, 100), Ok(()));
        assert_eq!(outbox.push(frame.clone(), control(), 2, 100), Ok(()));
        assert_eq!(outbox.push(frame.clone(), control(), 2, 100), Err(Overflow));
        assert_eq!(outbox.push(frame.clone(), control(), 10, 25), Err(Overflow));
        assert_eq!((outbox.frames_len(), outbox.bytes_len()), (2, 20));
    }

    #[test]
    fn partial_writes_resume_mid_frame_and_gather_coalesces() {
        let mut outbox = Outbox::default();
        for frame in [&b"aaaa"[..], b"bb", b"cccccc"] {
            outbox
                .push(Bytes::copy_from_slice(frame), control(), 10, 100)
                .unwrap();
        }
        let mut out = Vec::new();
        outbox.gather(&mut out, 7);
        assert_eq!(out, b"aaaabb");
        assert_eq!(outbox.advance(5), 1);
        assert_eq!(outbox.front(), Some(&b"b"[..]));
        assert_eq!(outbox.bytes_len(), 7);
        out.clear();
        outbox.gather(&mut out, 100);
        assert_eq!(out, b"bcccccc");
        assert_eq!(outbox.advance(7), 2);
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes_len(), 0);
    }

    #[test]
    fn a_close_keeps_the_started_front_exactly_and_drops_the_rest() {
        let mut outbox = Outbox::default();
        for frame in [&b"aaaa"[..], b"bbbbbb", b"cc"] {
            outbox
                .push(Bytes::copy_from_slice(frame), control(), 10, 100)
                .unwrap();
        }
        let (frame, kind) = message("q", 1, true, Slow::Disconnect);
        outbox.push_message(frame, kind, 10, 100).unwrap();
        assert_eq!(outbox.advance(6), 1, "aaaa went, bbbbbb is started");
        assert_eq!(
            outbox.drop_unstarted(),
            2,
            "cc and the critical message go; the started frame is no drop"
        );
        assert_eq!(queued(&outbox), "bbbb");
        assert_eq!((outbox.frames_len(), outbox.bytes_len()), (1, 4));
        outbox.push_unbounded(Bytes::from_static(b"close;"));
        let mut out = Vec::new();
        outbox.gather(&mut out, 100);
        assert_eq!(out, b"bbbbclose;", "the close follows the whole frame");
        assert_eq!(
            outbox.advance(10),
            2,
            "the kept tail counts as one written frame"
        );
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes_len(), 0);
    }

    #[test]
    fn a_close_drops_an_unstarted_front_and_an_empty_outbox_stays_empty() {
        let mut outbox = Outbox::default();
        assert_eq!(outbox.drop_unstarted(), 0);
        for frame in [&b"aaaa"[..], b"bb"] {
            outbox
                .push(Bytes::copy_from_slice(frame), control(), 10, 100)
                .unwrap();
        }
        assert_eq!(outbox.drop_unstarted(), 2, "nothing was started: all go");
        assert!(outbox.is_empty());
        assert_eq!((outbox.bytes_len(), outbox.front()), (0, None));
        outbox
            .push(Bytes::from_static(b"next;"), control(), 10, 100)
            .unwrap();
        assert_eq!(
            outbox.front(),
            Some(&b"next;"[..]),
            "nothing of the old front is left"
        );
    }

    #[test]
    fn the_rest_of_a_direct_write_is_a_started_front_past_the_limits() {
        let mut outbox = Outbox::default();
        outbox.push_started(Bytes::from_static(b"0123456789"), 3);
        assert_eq!(outbox.front(), Some(&b"3456789"[..]));
        assert_eq!((outbox.frames_len(), outbox.bytes_len()), (1, 7));
        assert_eq!(
            outbox.push(Bytes::from_static(b"x"), control(), 10, 7),
            Err(Overflow),
            "the tail counts against the limits of what follows"
        );
        let (frame, kind) = message("alert", 1, true, Slow::Disconnect);
        outbox.push_message(frame, kind, 10, 100).unwrap();
        assert_eq!(
            queued(&outbox),
            "3456789alert:1;",
            "nothing overtakes a started frame"
        );
        assert_eq!(outbox.bytes_len(), frame_bytes(&outbox));
        assert_eq!(outbox.drop_unstarted(), 1);
        assert_eq!(queued(&outbox), "3456789");
        assert_eq!(outbox.advance(7), 1);
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes_len(), 0);
    }

    #[test]
    fn critical_overtakes_other_channels_but_not_its_own_nor_barriers() {
        let mut outbox = Outbox::default();
        let push = |outbox: &mut Outbox, (frame, kind): (Bytes, Kind)| {
            outbox.push_message(frame, kind, 100, 10_000).unwrap()
        };
        push(&mut outbox, message("bulk", 1, false, Slow::Disconnect));
        outbox.advance(2);
        outbox
            .push(Bytes::from_static(b"reply;"), control(), 100, 10_000)
            .unwrap();
        push(&mut outbox, message("bulk", 2, false, Slow::Disconnect));
        push(&mut outbox, message("alert", 1, false, Slow::Disconnect));
        push(&mut outbox, message("bulk", 3, false, Slow::Disconnect));
        push(&mut outbox, message("alert", 2, true, Slow::Disconnect));
        push(&mut outbox, message("other", 1, true, Slow::Disconnect));
        assert_eq!(
            queued(&outbox),
            "lk:1;reply;bulk:2;alert:1;alert:2;other:1;bulk:3;"
        );
        let mut fresh = Outbox::default();
        push(&mut fresh, message("bulk", 1, false, Slow::Disconnect));
        push(&mut fresh, message("alert", 1, true, Slow::Disconnect));
        assert_eq!(
            queued(&fresh),
            "alert:1;bulk:1;",
            "nothing started: first place"
        );
    }

    #[test]
    fn conflate_keeps_the_newest_per_key_at_the_back() {
        let mut outbox = Outbox::default();
        let keyed = |key| Slow::Conflate(Some(key));
        for (offset, key) in [(1, 10), (2, 20), (3, 10), (4, 30), (5, 20)] {
            let (frame, kind) = message("px", offset, false, keyed(key));
            outbox.push_message(frame, kind, 100, 10_000).unwrap();
        }
        let (frame, kind) = message("px", 6, false, Slow::Conflate(None));
        assert_eq!(
            outbox.push_message(frame, kind, 100, 10_000),
            Ok(Shed::default())
        );
        let (frame, kind) = message("px", 7, false, keyed(30));
        assert_eq!(
            outbox.push_message(frame, kind, 100, 10_000),
            Ok(Shed {
                dropped: 0,
                conflated: 1
            })
        );
        assert_eq!(queued(&outbox), "px:3;px:5;px:6;px:7;");
        assert_eq!(outbox.bytes_len(), frame_bytes(&outbox));
    }

    #[test]
    fn drop_oldest_replaces_the_channels_backlog_with_one_growing_gap() {
        let mut outbox = Outbox::default();
        let (max_frames, max_bytes) = (4, 10_000);
        let push = |outbox: &mut Outbox, channel, offset| {
            let (frame, kind) = message(channel, offset, false, Slow::DropOldest);
            outbox.push_message(frame, kind, max_frames, max_bytes)
        };
        push(&mut outbox, "q", 1).unwrap();
        outbox.advance(1);
        push(&mut outbox, "other", 1).unwrap();
        push(&mut outbox, "q", 2).unwrap();
        push(&mut outbox, "q", 3).unwrap();
        assert_eq!(
            push(&mut outbox, "q", 4),
            Ok(Shed {
                dropped: 2,
                conflated: 0
            })
        );
        assert_eq!(
            queued(&outbox),
            ":1;other:1;gap(q,2,3);q:4;",
            "the started frame stays; 2 and 3 make way"
        );
        assert_eq!(
            push(&mut outbox, "q", 5),
            Ok(Shed {
                dropped: 1,
                conflated: 0
            })
        );
        assert_eq!(
            queued(&outbox),
            ":1;other:1;gap(q,2,4);q:5;",
            "the open notice grows over 4 and 5 takes its place"
        );
        assert_eq!(outbox.bytes_len(), frame_bytes(&outbox));
    }

    #[test]
    fn drop_oldest_with_nothing_of_its_own_drops_the_newcomer_or_overflows() {
        let mut outbox = Outbox::default();
        let (frame, kind) = message("other", 1, false, Slow::Disconnect);
        outbox.push_message(frame, kind, 2, 10_000).unwrap();
        let (frame, kind) = message("q", 7, false, Slow::DropOldest);
        outbox.push_message(frame, kind, 2, 10_000).unwrap();
        let (frame, kind) = message("q", 8, false, Slow::DropOldest);
        assert_eq!(
            outbox.push_message(frame, kind, 2, 10_000),
            Ok(Shed {
                dropped: 2,
                conflated: 0
            }),
            "7 made way, then 8 itself: the notice needs the room"
        );
        assert_eq!(queued(&outbox), "other:1;gap(q,7,8);");
        let (frame, kind) = message("z", 1, false, Slow::DropOldest);
        assert_eq!(
            outbox.push_message(frame, kind, 2, 10_000),
            Err(Overflow),
            "no room even for a notice"
        );
    }

    #[test]
    fn critical_overflow_is_refused_whatever_the_policy() {
        let mut outbox = Outbox::default();
        let (frame, kind) = message("q", 1, false, Slow::DropOldest);
        outbox.push_message(frame, kind, 1, 10_000).unwrap();
        let (frame, kind) = message("q", 2, true, Slow::DropOldest);
        assert_eq!(outbox.push_message(frame, kind, 1, 10_000), Err(Overflow));
    }
}
