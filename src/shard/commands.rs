//! The shard's answers to a connection's commands: `subscribe` (and the recovery that answers
//! one with `since`), `refresh`, `ack`, `unsubscribe`, `publish` and `presence`.
//!
//! Commands keep no state of their own: each checks its arguments against the settings and the
//! connection's grant, then acts through the owners that hold the state (the interest and
//! registry, the forwarder to the ingest core, the counters), so these are methods of the
//! shard rather than of a struct of their own. Each returns the reply to send, `None` when the
//! reply comes later (from the ingest core, or once a pattern is routed here), or the error to
//! answer with. None of them waits.

use bytes::Bytes;
use hashbrown::HashMap;
use sonic_rs::Value;

use super::conn::{ConnHandle, Subscription};
use super::interest::Waiter;
use super::ShardCore;
use crate::channel;
use crate::msg::{AckRow, Recovered, Since, ToIngest};
use crate::ws::command::{self, ErrorCode, ErrorReply};

/// `forbidden` unless the connection's token grants subscribing to `pattern` (as the client
/// wrote it: grants are in the tenant's own names). Its own `$user` needs no grant; nothing
/// else under `$user` is anyone's to read.
fn check_grant(handle: &ConnHandle, pattern: &str, id: &Option<Value>) -> Result<(), ErrorReply> {
    if channel::is_user_stream(pattern) {
        return check_own_stream(handle, pattern, id);
    }
    match &*handle.grant.borrow() {
        Some(grant) if !grant.may_subscribe(pattern) => Err(ErrorReply::new(
            id.clone(),
            ErrorCode::Forbidden,
            format!("the token does not grant {pattern:?}"),
        )),
        _ => Ok(()),
    }
}

/// `forbidden` unless `name` is exactly `$user` on a connection that has a user.
fn check_own_stream(handle: &ConnHandle, name: &str, id: &Option<Value>) -> Result<(), ErrorReply> {
    if name != channel::USER_CHANNEL {
        return Err(ErrorReply::new(
            id.clone(),
            ErrorCode::Forbidden,
            "a connection reads only its own user's stream, as $user",
        ));
    }
    if handle.user.is_none() {
        return Err(ErrorReply::new(
            id.clone(),
            ErrorCode::Forbidden,
            "$user needs a user: a token's sub, or ?user= without auth",
        ));
    }
    Ok(())
}

/// The `seq` after which the connection's live subscription to `pattern` (a full name) covers
/// every message; `None` when it is not subscribed or not live yet.
fn live_from(handle: &ConnHandle, pattern: &str) -> Option<u64> {
    handle
        .subscriptions
        .borrow()
        .iter()
        .find(|subscription| *subscription.pattern == *pattern)
        .map(|subscription| subscription.covered_from.get())
        .filter(|&from| from != Subscription::PENDING)
}

/// `not_subscribed` unless a subscription of the connection matches the channel of full name
/// `full`.
fn check_matched(handle: &ConnHandle, full: &str, id: &Option<Value>) -> Result<(), ErrorReply> {
    let matched = handle
        .subscriptions
        .borrow()
        .iter()
        .any(|subscription| channel::pattern_matches(&subscription.pattern, full));
    if matched {
        return Ok(());
    }
    Err(ErrorReply::new(
        id.clone(),
        ErrorCode::NotSubscribed,
        format!(
            "no subscription of this connection matches {:?}",
            channel::visible(full)
        ),
    ))
}

impl ShardCore {
    /// `internal` "overloaded" while what the shard has for the ingest core waits in its
    /// backlog past `queue_items_max`: a command that needs the ingest core is refused then.
    fn check_backlog(&self, id: &Option<Value>) -> Result<(), ErrorReply> {
        if self.forwarder.backlog_len() >= self.settings.queue_items_max {
            return Err(ErrorReply::new(
                id.clone(),
                ErrorCode::Internal,
                "the server is overloaded; retry later",
            ));
        }
        Ok(())
    }

    /// `subscribed` for a live subscription, as of the shard's position now.
    pub(super) fn subscribed_frame(&self, pattern: &str, id: &Option<Value>) -> Bytes {
        command::subscribed_frame(
            pattern,
            id,
            &self.interest.epoch(),
            self.interest.position(),
            None,
        )
    }

    /// The `subscribe` command. With `since`, the subscription goes live when the ingest
    /// core's `Recovered` arrives, after the missed messages it carries.
    pub fn subscribe(
        &self,
        handle: &ConnHandle,
        pattern: &str,
        since: Option<Since>,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        let settings = &self.settings;
        command::check_pattern(pattern, settings.channel_bytes_max, &id)?;
        check_grant(handle, pattern, &id)?;
        let full = handle.full_name(pattern);
        let pattern = &*full;
        let own = channel::visible(pattern) == channel::USER_CHANNEL;
        if handle.is_subscribed(pattern) {
            return match since {
                Some(since) if own && live_from(handle, pattern).is_some() => {
                    self.resume(handle, pattern, since, id)
                }
                _ => Ok(Some(self.subscribed_frame(pattern, &id))),
            };
        }
        let counted = handle.counted_subscriptions();
        if counted >= settings.subscriptions_per_conn_max && !own {
            return Err(ErrorReply::new(
                id,
                ErrorCode::TooManySubscriptions,
                format!("this connection already has {counted} subscriptions, the limit"),
            ));
        }
        let mut subscriptions = handle.subscriptions.borrow_mut();
        if since.is_some() {
            self.check_backlog(&id)?;
        }
        subscriptions.push(Subscription::new(pattern));
        drop(subscriptions);
        self.presence_join(handle, pattern);
        let Some(since) = since else {
            let waiter = Waiter::Reply(id.clone());
            if self
                .interest
                .announce(pattern, handle.id, waiter, &self.forwarder)
            {
                self.interest.make_live(handle, pattern);
                return Ok(Some(self.subscribed_frame(pattern, &id)));
            }
            return Ok(None);
        };
        // Sent after the interest, so the ingest core routes the pattern here before it
        // takes the snapshot of history that `Recovered` carries.
        self.interest
            .announce(pattern, handle.id, Waiter::Recovery, &self.forwarder);
        self.ask_recovery(handle, pattern, since, id);
        Ok(None)
    }

    /// A `subscribe` with `since` to the connection's own `$user`, which is live already (the
    /// server subscribed it at connect): what was published to the user after `since` and
    /// before the subscription went live is recovered, with no `unsubscribe` first, so a
    /// reconnecting client loses nothing in between and gets nothing twice. The live
    /// subscription stays as it is; [`Self::recovered`] leaves out what it covers.
    fn resume(
        &self,
        handle: &ConnHandle,
        pattern: &str,
        since: Since,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        self.check_backlog(&id)?;
        self.ask_recovery(handle, pattern, since, id);
        Ok(None)
    }

    /// Asks the ingest core for what `pattern` missed after `since`, answered by `Recovered`.
    fn ask_recovery(&self, handle: &ConnHandle, pattern: &str, since: Since, id: Option<Value>) {
        self.forwarder.send(ToIngest::Recover {
            shard: self.id,
            conn: handle.id,
            id,
            pattern: pattern.into(),
            since,
        });
    }

    /// The ingest core's answer to a `subscribe` with `since`: the subscription goes live, and
    /// its reply and missed messages are queued ahead of any live message. A missed message
    /// that another live subscription of the connection covers was sent already, or will be,
    /// and is left out, so overlapping subscriptions deliver each message once. A subscription
    /// live already (a resumed `$user`, [`Self::resume`]) keeps its route and its cover, and
    /// only what came before its cover is sent.
    pub(super) fn recovered(&self, recovered: Recovered) {
        let Recovered {
            conn,
            pattern,
            reply,
            missed,
            covered_from,
            position,
        } = recovered;
        self.interest.advance_position(position);
        let Some(handle) = self.conns.get(conn) else {
            return;
        };
        if !handle.is_subscribed(&pattern) {
            return;
        }
        let live = live_from(&handle, &pattern);
        if live.is_none() {
            self.interest.route(&pattern, conn);
        }
        let bytes = missed.iter().map(|missed| missed.frame.len()).sum();
        let mut joined = bytes::BytesMut::with_capacity(bytes);
        for missed in &missed {
            let sent_live = live.is_some_and(|from| missed.seq > from);
            if !sent_live && !handle.covered_elsewhere(&pattern, missed.channel(), missed.seq) {
                joined.extend_from_slice(&missed.frame);
            }
        }
        if live.is_none() {
            handle.cover_from(&pattern, covered_from);
        }
        self.send_to(&handle, reply);
        handle.push_recovered(joined.freeze());
    }

    /// The `refresh` command: a new token for the same subject replaces the grant and its `exp`.
    pub fn refresh(
        &self,
        handle: &ConnHandle,
        token: &str,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        let Some(verifier) = &self.verifier else {
            return Err(ErrorReply::new(
                id,
                ErrorCode::BadRequest,
                "this server runs without auth: there is no token to refresh",
            ));
        };
        let grant = verifier
            .verify(Some(token))
            .map_err(|err| ErrorReply::new(id.clone(), ErrorCode::Forbidden, err.to_string()))?;
        let mut current = handle.grant.borrow_mut();
        if let Some(current) = &*current {
            if current.sub != grant.sub || current.tenant != grant.tenant {
                return Err(ErrorReply::new(
                    id,
                    ErrorCode::Forbidden,
                    "a refresh must be for the same sub and tenant as the connection's token",
                ));
            }
        }
        let exp = grant.exp;
        *current = Some(Box::new(grant));
        Ok(Some(command::refreshed_frame(&id, exp)))
    }

    /// The `ack` command: keeps the highest offset acked per channel.
    pub fn ack(
        &self,
        handle: &ConnHandle,
        channel: &str,
        offset: u64,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        command::check_channel(channel, self.settings.channel_bytes_max, &id)?;
        if channel::is_user_stream(channel) {
            check_own_stream(handle, channel, &id)?;
        }
        let full = handle.full_name(channel);
        let channel = &*full;
        check_matched(handle, channel, &id)?;
        let mut acks = handle.acks.borrow_mut();
        match acks.iter().position(|(acked, _)| **acked == *channel) {
            Some(at) => acks[at].1 = acks[at].1.max(offset),
            None if acks.len() >= self.settings.subscriptions_per_conn_max => {
                return Err(ErrorReply::new(
                    id,
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "this connection acks {} channels already, the limit \
                         (subscriptions_per_conn_max)",
                        acks.len()
                    ),
                ));
            }
            None => acks.push((channel.into(), offset)),
        }
        drop(acks);
        self.counters.count_ack();
        Ok(id
            .is_some()
            .then(|| command::acked_frame(&id, channel, offset)))
    }

    /// Every channel some connection here acked: how many connections and their offsets.
    pub(super) fn ack_rows(&self) -> Vec<AckRow> {
        let mut rows: HashMap<Box<str>, AckRow> = HashMap::new();
        self.conns.each(|handle| {
            for (channel, offset) in handle.acks.borrow().iter() {
                let row = rows.entry(channel.clone()).or_insert_with(|| AckRow {
                    channel: channel.clone(),
                    conns: 0,
                    offset_min: *offset,
                    offset_max: *offset,
                });
                row.conns += 1;
                row.offset_min = row.offset_min.min(*offset);
                row.offset_max = row.offset_max.max(*offset);
            }
        });
        rows.into_values().collect()
    }

    /// The `unsubscribe` command.
    pub fn unsubscribe(
        &self,
        handle: &ConnHandle,
        pattern: &str,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        command::check_pattern(pattern, self.settings.channel_bytes_max, &id)?;
        check_grant(handle, pattern, &id)?;
        let full = handle.full_name(pattern);
        let pattern = &*full;
        if !self.drop_subscription(handle, pattern) {
            return Err(ErrorReply::new(
                id,
                ErrorCode::NotSubscribed,
                format!("not subscribed to {:?}", channel::visible(pattern)),
            ));
        }
        Ok(Some(command::channel_reply_frame(
            "unsubscribed",
            pattern,
            &id,
        )))
    }

    /// The `publish` command: checked here, sequenced by the ingest core, which replies.
    pub fn client_publish(
        &self,
        handle: &ConnHandle,
        channel: &str,
        data: &str,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        let settings = &self.settings;
        command::check_channel(channel, settings.channel_bytes_max, &id)?;
        // With auth, the token's `publish` claim decides; without, `client_publish`. Only the
        // control plane publishes to a user (`POST /v1/publish` with `user`).
        let allowed = !channel::is_system(channel)
            && !channel::is_user_stream(channel)
            && match &*handle.grant.borrow() {
                Some(grant) => grant.may_publish(channel),
                None => settings
                    .client_publish
                    .iter()
                    .any(|pattern| channel::pattern_matches(pattern, channel)),
            };
        if !allowed {
            return Err(ErrorReply::new(
                id,
                ErrorCode::Forbidden,
                format!("publishing to {channel:?} is not granted to this connection"),
            ));
        }
        self.check_backlog(&id)?;
        self.forwarder.send(ToIngest::Publish {
            shard: self.id,
            conn: handle.id,
            id,
            channel: handle.full_name(channel).into(),
            data: data.into(),
        });
        Ok(None)
    }

    /// The `presence` command: checked here (an exact channel of a presence namespace that a
    /// subscription of the connection matches), answered by the ingest core, which asks every
    /// shard (and node) and replies.
    pub fn presence_command(
        &self,
        handle: &ConnHandle,
        channel: &str,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        command::check_channel(channel, self.settings.channel_bytes_max, &id)?;
        let full = handle.full_name(channel);
        if channel::is_user_stream(channel)
            || self.config.presence_of(&full) == crate::config::PresenceMode::Off
        {
            return Err(ErrorReply::new(
                id,
                ErrorCode::PresenceDisabled,
                format!("{channel:?} is in no namespace with presence = true"),
            ));
        }
        check_matched(handle, &full, &id)?;
        self.check_backlog(&id)?;
        self.forwarder.send(ToIngest::Presence {
            shard: self.id,
            conn: handle.id,
            id,
            channel: full.into(),
        });
        Ok(None)
    }

    /// `subscribed` with `"server":true` for a live server-side subscription.
    pub(super) fn server_subscribed_frame(&self, pattern: &str) -> Bytes {
        command::server_subscribed_frame(pattern, &self.interest.epoch(), self.interest.position())
    }

    /// A server-side subscription (`POST /v1/users/subscribe`) of one connection to `pattern`
    /// (validated by the API, in the tenant's own names): no grant needed, the usual limit.
    /// An error frame tells the connection when the limit refuses it.
    pub(super) fn server_subscribe(&self, handle: &ConnHandle, pattern: &str) {
        let full = handle.full_name(pattern);
        let pattern = &*full;
        if handle.is_subscribed(pattern) {
            let reply = self.server_subscribed_frame(pattern);
            self.send_to(handle, reply);
            return;
        }
        let counted = handle.counted_subscriptions();
        if counted >= self.settings.subscriptions_per_conn_max {
            let refusal = ErrorReply::new(
                None,
                ErrorCode::TooManySubscriptions,
                format!(
                    "the server could not subscribe this connection to {:?}: it has {counted} \
                     subscriptions, the limit",
                    channel::visible(pattern)
                ),
            );
            self.send_to(handle, refusal.frame());
            return;
        }
        handle
            .subscriptions
            .borrow_mut()
            .push(Subscription::new(pattern));
        self.presence_join(handle, pattern);
        if self
            .interest
            .announce(pattern, handle.id, Waiter::Server, &self.forwarder)
        {
            self.interest.make_live(handle, pattern);
            let reply = self.server_subscribed_frame(pattern);
            self.send_to(handle, reply);
        }
    }

    /// A server-side unsubscribe (`POST /v1/users/unsubscribe`) of one connection from
    /// `pattern`; nothing for a connection not subscribed to it.
    pub(super) fn server_unsubscribe(&self, handle: &ConnHandle, pattern: &str) {
        let full = handle.full_name(pattern);
        if self.drop_subscription(handle, &full) {
            self.send_to(handle, command::server_unsubscribed_frame(&full));
        }
    }

    /// Ends the connection's subscription to `pattern` (a full name), if it has one.
    fn drop_subscription(&self, handle: &ConnHandle, pattern: &str) -> bool {
        let mut subscriptions = handle.subscriptions.borrow_mut();
        let Some(at) = subscriptions
            .iter()
            .position(|subscription| *subscription.pattern == *pattern)
        else {
            return false;
        };
        subscriptions.swap_remove(at);
        drop(subscriptions);
        self.presence.leave(pattern, handle.id);
        self.interest.unroute(pattern, handle.id);
        self.interest.withdraw(pattern, &self.forwarder);
        true
    }
}
