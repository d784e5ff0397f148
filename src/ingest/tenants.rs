//! Tenant publish limits: each publishing tenant's token bucket for `tenant_publishes_per_s`.
//!
//! Publishes to a tenant's channels, from the HTTP API or from its clients' `publish` commands,
//! are counted here, the one place that sees every shard's (in cluster mode, each node counts
//! its own). A batch takes the tokens of all its messages or none. This only says yes or
//! "retry in"; it never queues or answers a publish.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use hashbrown::HashMap;

use super::PublishError;
use crate::rate::TokenBucket;

/// Tenant buckets kept before the full (idle) ones are dropped.
const TENANT_BUCKETS_PRUNE_AT: usize = 4_096;

/// The publishing tenants' buckets.
pub(crate) struct TenantLimits {
    /// `tenant_publishes_per_s`; 0: no limit.
    per_s: u32,
    /// Each publishing tenant's bucket, at most about [`TENANT_BUCKETS_PRUNE_AT`].
    buckets: RefCell<HashMap<Box<str>, TokenBucket>>,
    /// Publishes refused because their tenant was over `tenant_publishes_per_s`.
    refused_total: Cell<u64>,
}

impl TenantLimits {
    /// No tenant has published yet; each may publish `per_s` (`tenant_publishes_per_s`) a
    /// second, 0 for no limit.
    pub(super) fn new(per_s: u32) -> TenantLimits {
        TenantLimits {
            per_s,
            buckets: RefCell::default(),
            refused_total: Cell::new(0),
        }
    }

    /// Publishes refused so far.
    pub(super) fn refused_total(&self) -> u64 {
        self.refused_total.get()
    }

    /// Takes the publish tokens of every message of a batch to `channels` from their tenants'
    /// buckets (see [`TenantLimits::allow`]): all of them, or none when one tenant lacks
    /// some.
    pub(super) fn allow_batch<'a>(
        &self,
        channels: impl Iterator<Item = &'a str>,
    ) -> Result<(), PublishError> {
        let per_s = self.per_s;
        if per_s == 0 {
            return Ok(());
        }
        let mut wanted: HashMap<&str, usize> = HashMap::new();
        for tenant in channels.filter_map(|channel| crate::channel::split_scope(channel).0) {
            *wanted.entry(tenant).or_default() += 1;
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let per_s = u64::from(per_s);
        let mut buckets = self.buckets.borrow_mut();
        if buckets.len() >= TENANT_BUCKETS_PRUNE_AT {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let mut taken = Vec::with_capacity(wanted.len());
        let mut refused: Option<PublishError> = None;
        let mut refused_messages = 0;
        for (&tenant, &messages) in &wanted {
            if messages as u64 > per_s {
                refused = Some(PublishError::BatchOverRate { messages });
                refused_messages += messages;
                continue;
            }
            let mut bucket = buckets
                .get(tenant)
                .cloned()
                .unwrap_or_else(|| TokenBucket::full(per_s, per_s, now));
            let got = (0..messages).take_while(|_| bucket.take(now)).count();
            if got == messages {
                taken.push((tenant, bucket));
                continue;
            }
            // Past the next token, each missing one takes 1/per_s seconds more.
            let missing_after_next = (messages - got - 1) as u128;
            let wait_ns = bucket.next_token_in().as_nanos()
                + missing_after_next * 1_000_000_000 / u128::from(per_s);
            let retry_ms = u64::try_from(wait_ns.div_ceil(1_000_000)).unwrap_or(u64::MAX);
            refused_messages += messages;
            refused = match refused {
                Some(PublishError::RateLimited { retry_ms: before }) => {
                    Some(PublishError::RateLimited {
                        retry_ms: before.max(retry_ms),
                    })
                }
                None => Some(PublishError::RateLimited { retry_ms }),
                over => over,
            };
        }
        if let Some(err) = refused {
            self.refused_total
                .set(self.refused_total.get() + refused_messages as u64);
            return Err(err);
        }
        for (tenant, bucket) in taken {
            match buckets.get_mut(tenant) {
                Some(kept) => *kept = bucket,
                None => {
                    buckets.insert(tenant.into(), bucket);
                }
            }
        }
        Ok(())
    }

    /// Takes a publish token from the bucket of `channel`'s tenant, when it is a tenant's and
    /// `tenant_publishes_per_s` is set. Buckets that refilled are forgotten once there are
    /// [`TENANT_BUCKETS_PRUNE_AT`]: a new one starts full, so they hold nothing to keep.
    pub(super) fn allow(&self, channel: &str) -> Result<(), PublishError> {
        let per_s = self.per_s;
        let Some(tenant) = crate::channel::split_scope(channel).0.filter(|_| per_s > 0) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.borrow_mut();
        if buckets.len() >= TENANT_BUCKETS_PRUNE_AT && !buckets.contains_key(tenant) {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        if !buckets.contains_key(tenant) {
            let per_s = u64::from(per_s);
            buckets.insert(tenant.into(), TokenBucket::full(per_s, per_s, now));
        }
        let bucket = buckets.get_mut(tenant).expect("inserted above");
        if bucket.take(now) {
            return Ok(());
        }
        self.refused_total.set(self.refused_total.get() + 1);
        Err(PublishError::RateLimited {
            retry_ms: bucket.next_token_in().as_nanos().div_ceil(1_000_000) as u64,
        })
    }
}
