//! The client's subscriptions and where each one is in the stream: what to resubscribe, and
//! with which `since`, after a reconnect.
//!
//! Owns, per subscribed pattern, its position (delivery spec, "Clients"): the epoch it was
//! taken in, the last `seq` seen through it (or of its last `subscribed` reply), and for an
//! exact channel the last `offset`. It never touches a socket and never drops or reorders a
//! message: it only watches what the session delivers, and writes the `subscribe` commands a
//! new connection sends. Positions are kept conservatively: when in doubt a position stays
//! older, so a recovery may resend a message the application saw but never skips one.

use serde_json::json;

use corecast_proto::channel::{is_pattern, pattern_matches};
use corecast_proto::{Position, Since};

/// Where a subscription resumes from: the `since` of its next `subscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The server run the numbers below belong to; `None` before a server named one.
    pub epoch: Option<String>,
    /// The last `seq` received through the subscription, or of its last `subscribed` reply.
    pub seq: Option<u64>,
    /// For an exact channel, the last `offset` received on it.
    pub offset: Option<u64>,
}

/// Where the application asks a new subscription to start (`corecast subscribe --since-*`):
/// after a node-wide `seq` of its epoch (any pattern), or after an `offset` (exact channels
/// only; the server refuses it on a pattern).
impl From<Since> for Cursor {
    fn from(since: Since) -> Self {
        let epoch = Some(since.epoch.into());
        match since.position {
            Position::Seq(seq) => Cursor {
                epoch,
                seq: Some(seq),
                offset: None,
            },
            Position::Offset(offset) => Cursor {
                epoch,
                seq: None,
                offset: Some(offset),
            },
        }
    }
}

/// One subscribed pattern and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Subscription {
    pattern: String,
    /// Whether `pattern` names one channel (no `*` or `>`), so offsets apply to it.
    exact: bool,
    position: Cursor,
}

/// Every pattern the application subscribed and has not unsubscribed, in subscribe order.
#[derive(Debug, Default)]
pub struct Subscriptions {
    entries: Vec<Subscription>,
}

/// The `subscribed` reply as the tracker reads it.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub pattern: &'a str,
    pub epoch: Option<&'a str>,
    pub seq: Option<u64>,
    pub recovered: Option<bool>,
}

impl Subscriptions {
    /// How many patterns are subscribed.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Whether `pattern` is subscribed.
    pub fn contains(&self, pattern: &str) -> bool {
        self.entries.iter().any(|entry| entry.pattern == pattern)
    }

    /// Adds `pattern` resuming from `position` (default: only what is published from now on);
    /// `false` if it was subscribed already (its position is kept).
    pub fn add(&mut self, pattern: &str, position: Cursor) -> bool {
        if self.contains(pattern) {
            return false;
        }
        self.entries.push(Subscription {
            pattern: pattern.to_string(),
            exact: !is_pattern(pattern),
            position,
        });
        true
    }

    /// Forgets `pattern`; `false` if it was not subscribed.
    pub fn remove(&mut self, pattern: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.pattern != pattern);
        self.entries.len() < before
    }

    /// The position of `pattern`, if subscribed.
    pub fn position(&self, pattern: &str) -> Option<&Cursor> {
        self.entries
            .iter()
            .find(|entry| entry.pattern == pattern)
            .map(|entry| &entry.position)
    }

    /// Moves every subscription matching `channel` to this delivery, received on a connection
    /// of `epoch`.
    pub fn on_message(
        &mut self,
        epoch: Option<&str>,
        channel: &str,
        offset: u64,
        seq: Option<u64>,
    ) {
        for entry in &mut self.entries {
            if !pattern_matches(&entry.pattern, channel) {
                continue;
            }
            if seq.is_some() {
                entry.position.seq = seq;
            }
            if entry.exact {
                entry.position.offset = Some(offset);
            }
            entry.position.epoch = epoch.map(str::to_string);
        }
    }

    /// Takes a `subscribed` reply into account:
    /// - recovered: the missed messages follow and move the position themselves;
    /// - not recovered: what was missed is gone, so the subscription starts over at the reply's
    ///   `seq` (its offset is dropped: after `epoch_changed` it means nothing, and otherwise a
    ///   later offset-form `since` would ask again for what the server just refused);
    /// - no `recovered` (a plain first subscribe, or a repeat): the reply's `seq` is the start
    ///   when the subscription has no position yet, else the position stays.
    pub fn on_subscribed(&mut self, reply: Reply<'_>) {
        let Some(entry) = self
            .entries
            .iter_mut()
            .find(|entry| entry.pattern == reply.pattern)
        else {
            // Unsubscribed while the reply was on its way.
            return;
        };
        let position = &mut entry.position;
        let start_over = match reply.recovered {
            Some(true) => false,
            Some(false) => true,
            None => position.seq.is_none() && position.offset.is_none(),
        };
        if start_over {
            *position = Cursor {
                epoch: reply.epoch.map(str::to_string),
                seq: reply.seq,
                offset: None,
            };
        }
    }

    /// The `subscribe` command of every subscription for a new connection, each with the `since`
    /// of its position (offset form for an exact channel with an offset, else seq form, none
    /// without an epoch). `next_id` numbers them.
    pub fn resubscribe_commands(&self, mut next_id: impl FnMut() -> u64) -> Vec<String> {
        self.entries
            .iter()
            .map(|entry| subscribe_command(entry, next_id()))
            .collect()
    }

    /// The `subscribe` command of `pattern` alone (see [`Self::resubscribe_commands`]).
    pub fn subscribe_command(&self, pattern: &str, id: u64) -> Option<String> {
        self.entries
            .iter()
            .find(|entry| entry.pattern == pattern)
            .map(|entry| subscribe_command(entry, id))
    }
}

fn subscribe_command(entry: &Subscription, id: u64) -> String {
    let position = &entry.position;
    let since = match (&position.epoch, position.offset, position.seq) {
        (Some(epoch), Some(offset), _) if entry.exact => {
            Some(json!({"epoch": epoch, "offset": offset}))
        }
        (Some(epoch), _, Some(seq)) => Some(json!({"epoch": epoch, "seq": seq})),
        _ => None,
    };
    let mut command = json!({"type": "subscribe", "channel": entry.pattern, "id": id});
    if let Some(since) = since {
        command["since"] = since;
    }
    command.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn commands(subscriptions: &Subscriptions) -> Vec<Value> {
        let mut id = 0;
        subscriptions
            .resubscribe_commands(|| {
                id += 1;
                id
            })
            .iter()
            .map(|text| serde_json::from_str(text).unwrap())
            .collect()
    }

    fn reply<'a>(pattern: &'a str, seq: u64, recovered: Option<bool>) -> Reply<'a> {
        Reply {
            pattern,
            epoch: Some("e1"),
            seq: Some(seq),
            recovered,
        }
    }

    #[test]
    fn a_fresh_subscription_resubscribes_from_its_reply_seq() {
        let mut subscriptions = Subscriptions::default();
        assert!(subscriptions.add("leads.*", Cursor::default()));
        assert!(!subscriptions.add("leads.*", Cursor::default()));
        assert_eq!(
            commands(&subscriptions),
            [json!({"type": "subscribe", "channel": "leads.*", "id": 1})]
        );
        subscriptions.on_subscribed(reply("leads.*", 40, None));
        assert_eq!(
            commands(&subscriptions),
            [json!({"type": "subscribe", "channel": "leads.*", "id": 1,
                    "since": {"epoch": "e1", "seq": 40}})]
        );
    }

    #[test]
    fn messages_move_the_matching_subscriptions_only() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.add("leads.*", Cursor::default());
        subscriptions.add("leads.42", Cursor::default());
        subscriptions.add("prices.eu", Cursor::default());
        for pattern in ["leads.*", "leads.42", "prices.eu"] {
            subscriptions.on_subscribed(reply(pattern, 10, None));
        }
        subscriptions.on_message(Some("e1"), "leads.42", 3, Some(12));
        subscriptions.on_message(Some("e1"), "leads.7", 1, Some(13));
        assert_eq!(
            commands(&subscriptions),
            [
                json!({"type": "subscribe", "channel": "leads.*", "id": 1,
                       "since": {"epoch": "e1", "seq": 13}}),
                json!({"type": "subscribe", "channel": "leads.42", "id": 2,
                       "since": {"epoch": "e1", "offset": 3}}),
                json!({"type": "subscribe", "channel": "prices.eu", "id": 3,
                       "since": {"epoch": "e1", "seq": 10}}),
            ]
        );
    }

    #[test]
    fn recovery_keeps_the_position_and_a_refusal_starts_over() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.add("a.b", Cursor::default());
        subscriptions.on_subscribed(reply("a.b", 5, None));
        subscriptions.on_message(Some("e1"), "a.b", 2, Some(7));
        // Recovered: the reply's seq is past the missed messages still to come.
        subscriptions.on_subscribed(reply("a.b", 20, Some(true)));
        assert_eq!(
            subscriptions.position("a.b"),
            Some(&Cursor {
                epoch: Some("e1".into()),
                seq: Some(7),
                offset: Some(2)
            })
        );
        // A repeat subscribe's reply changes nothing.
        subscriptions.on_subscribed(reply("a.b", 30, None));
        assert_eq!(subscriptions.position("a.b").unwrap().seq, Some(7));
        // Not recovered (a restart): start over at the new epoch's seq, offset forgotten.
        subscriptions.on_subscribed(Reply {
            pattern: "a.b",
            epoch: Some("e2"),
            seq: Some(3),
            recovered: Some(false),
        });
        assert_eq!(
            commands(&subscriptions),
            [json!({"type": "subscribe", "channel": "a.b", "id": 1,
                    "since": {"epoch": "e2", "seq": 3}})]
        );
    }

    #[test]
    fn a_server_without_positions_gets_plain_subscribes() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.add("a.b", Cursor::default());
        subscriptions.on_subscribed(Reply {
            pattern: "a.b",
            epoch: None,
            seq: None,
            recovered: None,
        });
        subscriptions.on_message(None, "a.b", 4, None);
        assert_eq!(
            commands(&subscriptions),
            [json!({"type": "subscribe", "channel": "a.b", "id": 1})]
        );
    }

    #[test]
    fn an_application_since_is_sent_as_given_and_removal_forgets() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.add(
            "a.b",
            Since {
                epoch: "e0".into(),
                position: Position::Offset(0),
            }
            .into(),
        );
        subscriptions.add(
            "a.>",
            Since {
                epoch: "e0".into(),
                position: Position::Seq(9),
            }
            .into(),
        );
        assert_eq!(
            commands(&subscriptions),
            [
                json!({"type": "subscribe", "channel": "a.b", "id": 1,
                       "since": {"epoch": "e0", "offset": 0}}),
                json!({"type": "subscribe", "channel": "a.>", "id": 2,
                       "since": {"epoch": "e0", "seq": 9}}),
            ]
        );
        assert!(subscriptions.remove("a.b"));
        assert!(!subscriptions.remove("a.b"));
        assert_eq!(subscriptions.count(), 1);
        subscriptions.on_subscribed(reply("a.b", 1, None));
        assert!(!subscriptions.contains("a.b"));
    }
}
