//! Questions to every shard (`/v1/stats`, `/v1/channels`, `/v1/presence`, the stop
//! protocol's "stop accepting") and the gathering of their answers.
//!
//! A question goes out to every shard's queue, numbered; the answers come back one per shard
//! through the ingest core's inboxes, and the question is done when every shard has answered
//! or `QUERY_TIMEOUT` (2 s) passed, whichever comes first. This owns the questions in flight; it
//! never waits on a shard except for room in its queue and, bounded, for its answer.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use futures_channel::oneshot;
use hashbrown::HashMap;

use crate::msg::{Answer, QueryKind, ShardId, ToShard};
use crate::queue::Sender;

/// How long `/v1/stats` and `/v1/channels` wait for every shard's answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A question out to every shard.
struct PendingQuery {
    answers: Vec<(ShardId, Answer)>,
    done: Option<oneshot::Sender<Vec<(ShardId, Answer)>>>,
}

/// The questions in flight, by number.
#[derive(Default)]
pub(crate) struct Queries {
    pending: RefCell<HashMap<u64, PendingQuery>>,
    /// The number of the next question.
    next: Cell<u64>,
}

impl Queries {
    /// Asks every one of `shards` for `kind` and gathers the answers, in shard order: those
    /// that came within `QUERY_TIMEOUT`, all or none.
    pub(super) async fn ask(
        &self,
        shards: &[Sender<ToShard>],
        kind: QueryKind,
    ) -> Vec<(ShardId, Answer)> {
        let query = self.next.get();
        self.next.set(query + 1);
        let (done, answers) = oneshot::channel();
        self.pending.borrow_mut().insert(
            query,
            PendingQuery {
                answers: Vec::with_capacity(shards.len()),
                done: Some(done),
            },
        );
        for shard in shards {
            shard
                .push(ToShard::Query {
                    query,
                    kind: kind.clone(),
                })
                .await;
            shard.wake();
        }
        let answered = glommio::timer::timeout(QUERY_TIMEOUT, async {
            Ok(answers.await.unwrap_or_default())
        })
        .await;
        self.pending.borrow_mut().remove(&query);
        let mut answers = answered.unwrap_or_default();
        answers.sort_by_key(|(shard, _)| *shard);
        answers
    }

    /// Takes `shard`'s `answer` to `query`, one of `shards_len`; the last one answers the
    /// question. An answer to a question no longer waited for is dropped.
    pub(super) fn answered(&self, query: u64, shard: ShardId, answer: Answer, shards_len: usize) {
        let mut pending = self.pending.borrow_mut();
        if let Some(waiting) = pending.get_mut(&query) {
            waiting.answers.push((shard, answer));
            if waiting.answers.len() == shards_len {
                let waiting = pending.remove(&query).expect("just found");
                if let Some(done) = waiting.done {
                    let _ = done.send(waiting.answers);
                }
            }
        }
    }
}
