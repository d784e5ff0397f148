//! The subscription registry: which keys are subscribed to which patterns, and which keys a
//! published channel reaches.
//!
//! A shard keeps one with connection keys; the ingest core keeps one with shard ids, so it is
//! generic over the key. It owns the pattern-to-key bookkeeping and nothing else: it never
//! validates client input (the caller runs `channel::validate_pattern` first and an
//! unvalidated pattern here is a bug, so it asserts), never sends anything and never locks,
//! because it lives on one thread. Its names are full names (`channel::TENANT_MARK`): a
//! tenant's patterns and channels carry their scope, so tenants stay apart with no check here.
//! `collect_matches` runs once per published message, so it does one hash lookup for
//! wildcard-free patterns, walks a token trie only as deep as the channel for wildcard
//! patterns, allocates nothing beyond growing the caller's buffer, and pays for deduplication
//! only when several patterns matched. Every removal gives back the
//! memory its pattern no longer needs, so subscribe/unsubscribe churn cannot grow it.

use std::cmp::Reverse;
use std::hash::Hash;

use hashbrown::{HashMap, HashSet};

use crate::channel;

/// How many matched subscriber sets `collect_matches` merges with hash lookups (largest first,
/// each later key checked against the sets before it) before it falls back to copying them all
/// and sorting out the duplicates. Merging costs up to this many probes per key of the last set,
/// still fewer than the ~log2(n) comparisons per key of a sort at shard-sized sets; it also
/// sizes an array on the stack.
const MATCHED_SETS_STAGED_MAX: usize = 8;

/// Patterns to subscriber keys, for one shard (connection keys) or the ingest core (shard ids).
pub struct Registry<K> {
    /// Wildcard-free patterns with their keys: matching is one lookup by the channel name.
    exact: HashMap<String, HashSet<K>>,
    /// Subscriber count of each wildcard pattern; the keys themselves live in the trie.
    wild: HashMap<String, usize>,
    /// Token trie of the wildcard patterns.
    root: Node<K>,
    /// (pattern, key) subscriptions over `exact` and `wild` together.
    subscriptions_len: usize,
}

/// One trie node: the pattern prefix spelled by the tokens on the way down from the root.
struct Node<K> {
    /// Keys whose pattern ends at this node.
    keys: HashSet<K>,
    /// Keys whose pattern is this node's prefix followed by `>`.
    rest: HashSet<K>,
    /// The next token when it is a literal.
    children: HashMap<String, Node<K>>,
    /// The next token when it is `*`.
    star: Option<Box<Node<K>>>,
}

impl<K: Copy + Eq + Hash + Ord> Registry<K> {
    /// An empty registry; it allocates nothing until the first insert.
    #[must_use]
    pub fn new() -> Self {
        Registry {
            exact: HashMap::new(),
            wild: HashMap::new(),
            root: Node::default(),
            subscriptions_len: 0,
        }
    }

    /// Subscribes `key` to `pattern` (already validated by [`channel::validate_pattern`]).
    /// Returns true if it was not subscribed to that exact pattern before.
    ///
    /// # Panics
    /// If `pattern` is not a valid pattern: the caller skipped validation.
    pub fn insert(&mut self, pattern: &str, key: K) -> bool {
        assert!(
            channel::validate_pattern(channel::visible(pattern)).is_ok(),
            "registry insert of unvalidated pattern {pattern:?}"
        );
        let inserted = if channel::is_pattern(pattern) {
            let inserted = self.root.insert(pattern, key);
            if inserted {
                *self.wild.entry_ref(pattern).or_insert(0) += 1;
            }
            inserted
        } else {
            self.exact.entry_ref(pattern).or_default().insert(key)
        };
        if inserted {
            self.subscriptions_len += 1;
        }
        inserted
    }

    /// Returns true if `key` was subscribed to that exact pattern. Frees all memory of a pattern
    /// that has no subscribers left (no unbounded growth from churn).
    ///
    /// # Panics
    /// If `pattern` is not a valid pattern: the caller skipped validation.
    pub fn remove(&mut self, pattern: &str, key: K) -> bool {
        // An invalid pattern could name a trie path no insert made (`a.>.b` walks like `a.>`).
        assert!(
            channel::validate_pattern(channel::visible(pattern)).is_ok(),
            "registry remove of unvalidated pattern {pattern:?}"
        );
        let removed = if channel::is_pattern(pattern) {
            let removed = self.root.remove(pattern.split('.'), key);
            if removed {
                match self.wild.get_mut(pattern) {
                    Some(count) if *count > 1 => *count -= 1,
                    Some(_) => {
                        self.wild.remove(pattern);
                        release_sparse_map(&mut self.wild);
                    }
                    None => unreachable!("trie held a key of {pattern:?} without a count"),
                }
            }
            removed
        } else {
            match self.exact.get_mut(pattern) {
                None => false,
                Some(keys) => {
                    let removed = remove_key(keys, key);
                    if keys.is_empty() {
                        self.exact.remove(pattern);
                        release_sparse_map(&mut self.exact);
                    }
                    removed
                }
            }
        };
        if removed {
            self.subscriptions_len -= 1;
        }
        removed
    }

    /// How many keys are subscribed to exactly this pattern.
    #[must_use]
    pub fn subscribers(&self, pattern: &str) -> usize {
        if channel::is_pattern(pattern) {
            self.wild.get(pattern).copied().unwrap_or(0)
        } else {
            self.exact.get(pattern).map_or(0, HashSet::len)
        }
    }

    /// Clears `out`, then fills it with every distinct key having at least one pattern that
    /// matches `channel` (a concrete, validated channel name). A key subscribed through two
    /// overlapping patterns (e.g. `leads.42` and `leads.*` and `>`) appears ONCE. Order of keys
    /// is unspecified.
    pub fn collect_matches(&self, channel: &str, out: &mut Vec<K>) {
        // Only a debug check: the ingest core validated the name once per publish, and a bad
        // name here merely matches less, it cannot corrupt the registry.
        debug_assert!(
            channel::validate_channel(channel::visible(channel)).is_ok(),
            "collect_matches on unvalidated channel {channel:?}"
        );
        out.clear();
        let mut gather = Gather {
            staged: [None; MATCHED_SETS_STAGED_MAX],
            staged_len: 0,
            spilled: false,
            out,
        };
        if let Some(keys) = self.exact.get(channel) {
            gather.add(keys);
        }
        if !self.wild.is_empty() {
            self.root.collect(channel, &mut gather);
        }
        gather.finish();
    }

    /// Every pattern with at least one subscriber and its subscriber count (for the
    /// `/v1/channels` endpoint).
    pub fn patterns(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        let exact = self.exact.iter().map(|(p, keys)| (p.as_str(), keys.len()));
        let wild = self.wild.iter().map(|(p, &count)| (p.as_str(), count));
        exact.chain(wild)
    }

    /// Total number of (pattern, key) subscriptions.
    #[must_use]
    pub fn len(&self) -> usize {
        self.subscriptions_len
    }

    /// Whether no key is subscribed to any pattern.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.subscriptions_len == 0
    }
}

impl<K: Copy + Eq + Hash + Ord> Default for Registry<K> {
    fn default() -> Self {
        Registry::new()
    }
}

// Written out because a derive would demand `K: Default`, which no key needs.
impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            keys: HashSet::new(),
            rest: HashSet::new(),
            children: HashMap::new(),
            star: None,
        }
    }
}

impl<K: Copy + Eq + Hash + Ord> Node<K> {
    fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.rest.is_empty()
            && self.children.is_empty()
            && self.star.is_none()
    }

    /// Adds `key` under the valid wildcard `pattern`, creating the nodes on its path.
    fn insert(&mut self, pattern: &str, key: K) -> bool {
        let mut node = self;
        for token in pattern.split('.') {
            node = match token {
                // A valid pattern has `>` only as its last token.
                ">" => return node.rest.insert(key),
                "*" => node.star.get_or_insert_with(Box::default),
                literal => node.children.entry_ref(literal).or_default(),
            };
        }
        node.keys.insert(key)
    }

    /// Removes `key` from the pattern spelled by `tokens`, then drops every node on the way
    /// back up that no pattern needs any more.
    fn remove(&mut self, mut tokens: std::str::Split<'_, char>, key: K) -> bool {
        match tokens.next() {
            None => remove_key(&mut self.keys, key),
            Some(">") => remove_key(&mut self.rest, key),
            Some("*") => {
                let Some(star) = self.star.as_mut() else {
                    return false;
                };
                let removed = star.remove(tokens, key);
                if star.is_empty() {
                    self.star = None;
                }
                removed
            }
            Some(literal) => {
                let Some(child) = self.children.get_mut(literal) else {
                    return false;
                };
                let removed = child.remove(tokens, key);
                if child.is_empty() {
                    self.children.remove(literal);
                    release_sparse_map(&mut self.children);
                }
                removed
            }
        }
    }

    /// Gathers the keys of every pattern below this node that matches `channel_rest`, the part
    /// of the channel after this node's prefix (at least one token).
    fn collect<'r>(&'r self, channel_rest: &str, gather: &mut Gather<'r, '_, K>) {
        if !channel::wildcard_may_match(channel_rest) {
            // No wildcard stands for a reserved token (the server's channels, a tenant's
            // scope, a user's stream): only a literal one matches it.
            self.collect_children(channel_rest, gather);
            return;
        }
        gather.add(&self.rest);
        let tail = self.collect_children(channel_rest, gather);
        if let Some(star) = &self.star {
            star.collect_after(tail, gather);
        }
    }

    /// The literal-token half of [`Node::collect`]: the child named by the channel's next
    /// token. Returns the channel after that token.
    fn collect_children<'r, 'c>(
        &'r self,
        channel_rest: &'c str,
        gather: &mut Gather<'r, '_, K>,
    ) -> Option<&'c str> {
        let (token, tail) = match channel_rest.split_once('.') {
            Some((token, tail)) => (token, Some(tail)),
            None => (channel_rest, None),
        };
        if let Some(child) = self.children.get(token) {
            child.collect_after(tail, gather);
        }
        tail
    }

    /// Continues [`Node::collect`] one token down: the channel ends here or goes on.
    fn collect_after<'r>(&'r self, tail: Option<&str>, gather: &mut Gather<'r, '_, K>) {
        match tail {
            None => gather.add(&self.keys),
            Some(channel_rest) => self.collect(channel_rest, gather),
        }
    }
}

/// The sets that matched one channel, merged into the caller's buffer without duplicates.
struct Gather<'r, 'o, K> {
    /// The first matched sets, merged at `finish` by hash lookups.
    staged: [Option<&'r HashSet<K>>; MATCHED_SETS_STAGED_MAX],
    staged_len: usize,
    /// More sets matched than `staged` holds: `out` holds all their keys, duplicates included.
    spilled: bool,
    out: &'o mut Vec<K>,
}

impl<'r, K: Copy + Eq + Hash + Ord> Gather<'r, '_, K> {
    fn add(&mut self, keys: &'r HashSet<K>) {
        if keys.is_empty() {
            return;
        }
        if self.spilled {
            self.out.extend(keys.iter().copied());
        } else if self.staged_len < MATCHED_SETS_STAGED_MAX {
            self.staged[self.staged_len] = Some(keys);
            self.staged_len += 1;
        } else {
            self.spilled = true;
            for staged in self.staged.iter().flatten() {
                self.out.extend(staged.iter().copied());
            }
            self.out.extend(keys.iter().copied());
        }
    }

    fn finish(mut self) {
        if self.spilled {
            self.out.sort_unstable();
            self.out.dedup();
            return;
        }
        let staged = &mut self.staged[..self.staged_len];
        // Largest first: it is copied without lookups, and only the smaller sets after it pay
        // a lookup per key in each set before them.
        staged.sort_unstable_by_key(|keys| Reverse(keys.map_or(0, HashSet::len)));
        let staged = &*staged;
        let Some((Some(first), later)) = staged.split_first() else {
            return;
        };
        self.out
            .reserve(staged.iter().flatten().map(|keys| keys.len()).sum());
        self.out.extend(first.iter().copied());
        for (index, keys) in later.iter().flatten().enumerate() {
            let earlier = &staged[..=index];
            self.out.extend(
                keys.iter()
                    .copied()
                    .filter(|key| !earlier.iter().flatten().any(|seen| seen.contains(key))),
            );
        }
    }
}

/// Removes `key` from `keys` and gives back memory the set no longer needs.
fn remove_key<K: Copy + Eq + Hash>(keys: &mut HashSet<K>, key: K) -> bool {
    let removed = keys.remove(&key);
    if removed && keys.len() * 4 <= keys.capacity() {
        // At most a quarter full (or empty: `shrink_to(0)` frees the table). Shrinking to twice
        // the length leaves room to grow again before the next resize.
        keys.shrink_to(keys.len() * 2);
    }
    removed
}

/// Gives back memory of a map after a removal, by the same rule as [`remove_key`].
fn release_sparse_map<V>(map: &mut HashMap<String, V>) {
    if map.len() * 4 <= map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
impl<K: Copy + Eq + Hash + Ord + std::fmt::Debug> Registry<K> {
    /// Trie nodes below the root: 0 once no wildcard pattern has a subscriber.
    fn node_count(&self) -> usize {
        self.root.descendants_count()
    }

    /// Asserts the bookkeeping agrees with itself: counts match the trie, no empty set or node
    /// is kept, and `len` is the sum of all subscriptions.
    fn assert_consistent(&self) {
        let mut total = 0;
        for (pattern, keys) in &self.exact {
            assert!(!channel::is_pattern(pattern), "{pattern:?} stored as exact");
            assert!(!keys.is_empty(), "exact {pattern:?} kept with no keys");
            total += keys.len();
        }
        for (pattern, &count) in &self.wild {
            assert!(count > 0, "wildcard {pattern:?} kept with no keys");
            assert_eq!(self.root.terminal_len(pattern), count, "{pattern:?}");
            total += count;
        }
        assert_eq!(self.root.keys_count(), total - self.exact_len());
        assert_eq!(self.subscriptions_len, total);
        self.root.assert_no_empty_descendants();
    }

    fn exact_len(&self) -> usize {
        self.exact.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
impl<K: Copy + Eq + Hash + Ord> Node<K> {
    fn descendants(&self) -> impl Iterator<Item = &Node<K>> {
        self.children.values().chain(self.star.as_deref())
    }

    fn descendants_count(&self) -> usize {
        self.descendants()
            .map(|node| 1 + node.descendants_count())
            .sum()
    }

    fn keys_count(&self) -> usize {
        let below: usize = self.descendants().map(Node::keys_count).sum();
        self.keys.len() + self.rest.len() + below
    }

    fn assert_no_empty_descendants(&self) {
        for node in self.descendants() {
            assert!(!node.is_empty(), "empty trie node kept");
            node.assert_no_empty_descendants();
        }
    }

    /// Subscribers of the valid wildcard `pattern`, read from the trie alone.
    fn terminal_len(&self, pattern: &str) -> usize {
        let mut node = self;
        for token in pattern.split('.') {
            let next = match token {
                ">" => return node.rest.len(),
                "*" => node.star.as_deref(),
                literal => node.children.get(literal),
            };
            match next {
                Some(next) => node = next,
                None => return 0,
            }
        }
        node.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn matches(registry: &Registry<u32>, channel: &str) -> Vec<u32> {
        let mut out = Vec::new();
        registry.collect_matches(channel, &mut out);
        out.sort_unstable();
        out
    }

    fn registry_of(subscriptions: &[(&str, u32)]) -> Registry<u32> {
        let mut registry = Registry::new();
        for &(pattern, key) in subscriptions {
            assert!(registry.insert(pattern, key), "{pattern:?} {key}");
        }
        registry.assert_consistent();
        registry
    }

    #[test]
    fn exact_pattern_matches_only_its_channel() {
        let registry = registry_of(&[("leads.42", 1), ("leads.42", 2), ("leads.43", 3)]);
        assert_eq!(matches(&registry, "leads.42"), [1, 2]);
        assert_eq!(matches(&registry, "leads.43"), [3]);
        assert_eq!(matches(&registry, "leads"), [] as [u32; 0]);
        assert_eq!(matches(&registry, "leads.42.notes"), [] as [u32; 0]);
    }

    #[test]
    fn star_matches_exactly_one_token() {
        let registry = registry_of(&[("leads.*", 1), ("*.42", 2), ("a.*.c", 3)]);
        assert_eq!(matches(&registry, "leads.42"), [1, 2]);
        assert_eq!(matches(&registry, "leads.7"), [1]);
        assert_eq!(matches(&registry, "leads.1.2"), [] as [u32; 0]);
        assert_eq!(matches(&registry, "leads"), [] as [u32; 0]);
        assert_eq!(matches(&registry, "a.b.c"), [3]);
        assert_eq!(matches(&registry, "a.b.d"), [] as [u32; 0]);
    }

    #[test]
    fn greater_matches_one_or_more_tokens_but_not_the_prefix() {
        let registry = registry_of(&[("leads.>", 1), ("*.x.>", 2)]);
        assert_eq!(matches(&registry, "leads.42"), [1]);
        assert_eq!(matches(&registry, "leads.42.notes"), [1]);
        assert_eq!(matches(&registry, "leads"), [] as [u32; 0]);
        assert_eq!(matches(&registry, "lead.42"), [] as [u32; 0]);
        assert_eq!(matches(&registry, "leads.x.y"), [1, 2]);
        assert_eq!(matches(&registry, "q.x"), [] as [u32; 0]);
        assert_eq!(matches(&registry, "q.x.y.z"), [2]);
    }

    #[test]
    fn bare_wildcards_match_every_channel_of_their_depth() {
        let registry = registry_of(&[(">", 1), ("*", 2)]);
        assert_eq!(matches(&registry, "a"), [1, 2]);
        assert_eq!(matches(&registry, "a.b"), [1]);
        assert_eq!(matches(&registry, "a.b.c.d.e"), [1]);
    }

    #[test]
    fn overlapping_patterns_deliver_each_key_once() {
        let registry = registry_of(&[
            ("leads.42", 1),
            ("leads.*", 1),
            (">", 1),
            ("leads.>", 1),
            ("leads.42", 2),
            ("leads.*", 3),
            (">", 3),
            ("other", 4),
        ]);
        let mut out = Vec::new();
        registry.collect_matches("leads.42", &mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        out.sort_unstable();
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(matches(&registry, "leads.42.notes"), [1, 3]);
        assert_eq!(matches(&registry, "other"), [1, 3, 4]);
    }

    #[test]
    fn more_overlapping_sets_than_staged_still_deliver_once() {
        // 1 exact pattern plus 10 wildcard ones all match `a.b.c`: past the staged limit.
        let patterns = [
            "a.b.c", "a.b.*", "a.*.c", "*.b.c", "a.*.*", "*.*.c", "*.*.*", "a.>", "a.b.>", "*.>",
            ">",
        ];
        assert!(patterns.len() > MATCHED_SETS_STAGED_MAX);
        let mut registry = Registry::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let index = u32::try_from(index).unwrap();
            assert!(registry.insert(pattern, 100));
            assert!(registry.insert(pattern, index));
        }
        registry.assert_consistent();
        let expected: Vec<u32> = (0..11).chain([100]).collect();
        assert_eq!(matches(&registry, "a.b.c"), expected);
    }

    #[test]
    fn collect_matches_replaces_and_reuses_the_buffer() {
        let mut registry = Registry::new();
        for key in 0..1000 {
            registry.insert("room.1", key);
        }
        registry.insert("room.2", 5000);
        let mut out = vec![7, 7, 7];
        registry.collect_matches("room.2", &mut out);
        assert_eq!(out, [5000]);
        registry.collect_matches("room.1", &mut out);
        assert_eq!(out.len(), 1000);
        let buffer = out.as_ptr();
        let capacity = out.capacity();
        registry.collect_matches("room.1", &mut out);
        assert_eq!(out.len(), 1000);
        assert_eq!((out.as_ptr(), out.capacity()), (buffer, capacity));
        registry.collect_matches("room.3", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn insert_and_remove_report_changes() {
        let mut registry = Registry::new();
        assert!(registry.is_empty());
        assert!(registry.insert("leads.42", 1));
        assert!(!registry.insert("leads.42", 1));
        assert!(registry.insert("leads.*", 1));
        assert!(!registry.insert("leads.*", 1));
        assert!(registry.insert("leads.*", 2));
        assert!(registry.insert(">", 2));
        assert_eq!(registry.len(), 4);
        assert_eq!(registry.subscribers("leads.42"), 1);
        assert_eq!(registry.subscribers("leads.*"), 2);
        assert_eq!(registry.subscribers(">"), 1);
        assert_eq!(registry.subscribers("leads.>"), 0);
        assert_eq!(registry.subscribers("nobody"), 0);

        assert!(!registry.remove("leads.42", 2));
        assert!(!registry.remove("leads.>", 1));
        assert!(!registry.remove("nobody.*", 1));
        assert!(registry.remove("leads.42", 1));
        assert!(!registry.remove("leads.42", 1));
        assert!(registry.remove("leads.*", 1));
        assert!(!registry.remove("leads.*", 1));
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.subscribers("leads.*"), 1);
        registry.assert_consistent();
        assert!(registry.remove("leads.*", 2));
        assert!(registry.remove(">", 2));
        assert!(registry.is_empty());
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn patterns_lists_each_subscribed_pattern_with_its_count() {
        let registry = registry_of(&[("a", 1), ("a", 2), ("b.*", 1), (">", 3)]);
        let listed: BTreeMap<&str, usize> = registry.patterns().collect();
        let expected = BTreeMap::from([("a", 2), ("b.*", 1), (">", 1)]);
        assert_eq!(listed, expected);
    }

    #[test]
    fn last_remove_frees_pattern_memory() {
        let mut registry = Registry::new();
        assert_eq!(registry.node_count(), 0);
        registry.insert("a.b.*.c.>", 1);
        assert_eq!(registry.node_count(), 4);
        registry.insert("a.b.x", 1);
        registry.insert("a.*", 2);
        // a, a.b, a.b.*, a.b.*.c, a.* (the exact `a.b.x` is not in the trie).
        assert_eq!(registry.node_count(), 5);

        assert!(registry.remove("a.b.*.c.>", 1));
        // Only `a` and `a.*` are still needed.
        assert_eq!(registry.node_count(), 2);
        registry.assert_consistent();
        assert!(registry.remove("a.*", 2));
        assert!(registry.remove("a.b.x", 1));
        assert_eq!(registry.node_count(), 0);
        assert_eq!(registry.patterns().count(), 0);
        assert!(registry.is_empty());
        registry.assert_consistent();

        // Churn through many distinct patterns leaves nothing behind either.
        for round in 0..1000u32 {
            let exact = format!("room.{round}");
            let wild = format!("room.{round}.*");
            registry.insert(&exact, round);
            registry.insert(&wild, round);
            assert!(registry.remove(&exact, round));
            assert!(registry.remove(&wild, round));
        }
        assert_eq!(registry.node_count(), 0);
        assert_eq!(registry.patterns().count(), 0);
        assert!(registry.is_empty());
        assert_eq!(registry.exact.capacity(), 0);
        assert_eq!(registry.wild.capacity(), 0);
        assert_eq!(registry.root.children.capacity(), 0);
    }

    #[test]
    fn works_for_shard_ids() {
        let mut registry: Registry<u16> = Registry::default();
        registry.insert("leads.*", 3);
        registry.insert("leads.42", 3);
        registry.insert("leads.42", 0);
        let mut out = Vec::new();
        registry.collect_matches("leads.42", &mut out);
        out.sort_unstable();
        assert_eq!(out, [0, 3]);
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(bound).unwrap()).unwrap()
        }
    }

    const TOKENS: [&str; 4] = ["a", "b", "c", "d"];

    /// The system token, the user channel or one of two tenants' scopes (a scope needs a
    /// name after it).
    fn reserved_root(rng: &mut Rng) -> &'static str {
        [channel::SYSTEM_TOKEN, channel::USER_CHANNEL, "$t:x", "$t:y"][rng.below(4)]
    }

    fn random_channel(rng: &mut Rng) -> String {
        let depth = 1 + rng.below(4);
        let mut tokens: Vec<&str> = (0..depth)
            .map(|_| TOKENS[rng.below(TOKENS.len())])
            .collect();
        if rng.below(5) == 0 && tokens.len() > 1 {
            tokens[0] = reserved_root(rng);
            if tokens[0].starts_with(channel::TENANT_MARK) && tokens.len() > 2 && rng.below(2) == 0
            {
                tokens[1] = channel::USER_CHANNEL;
            }
        }
        tokens.join(".")
    }

    fn random_pattern(rng: &mut Rng) -> String {
        let depth = 1 + rng.below(4);
        let mut tokens: Vec<&str> = (0..depth)
            .map(|_| match rng.below(5) {
                0 => "*",
                _ => TOKENS[rng.below(TOKENS.len())],
            })
            .collect();
        if rng.below(6) == 0 {
            *tokens.last_mut().unwrap() = ">";
        }
        if rng.below(5) == 0 && tokens.len() > 1 {
            tokens[0] = reserved_root(rng);
            if tokens[0].starts_with(channel::TENANT_MARK) && tokens.len() > 2 && rng.below(2) == 0
            {
                tokens[1] = channel::USER_CHANNEL;
            }
        }
        let pattern = tokens.join(".");
        assert_eq!(
            channel::validate_pattern(channel::visible(&pattern)),
            Ok(())
        );
        pattern
    }

    fn assert_agrees_with_reference(
        registry: &Registry<u32>,
        model: &BTreeSet<(String, u32)>,
        rng: &mut Rng,
    ) {
        registry.assert_consistent();
        assert_eq!(registry.len(), model.len());
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (pattern, _) in model {
            *counts.entry(pattern).or_default() += 1;
        }
        let listed: BTreeMap<&str, usize> = registry.patterns().collect();
        assert_eq!(listed, counts);
        for (pattern, &count) in &counts {
            assert_eq!(registry.subscribers(pattern), count, "{pattern:?}");
        }

        let mut out = Vec::new();
        for _ in 0..1000 {
            let channel = random_channel(rng);
            let expected: BTreeSet<u32> = model
                .iter()
                .filter(|(pattern, _)| channel::pattern_matches(pattern, &channel))
                .map(|&(_, key)| key)
                .collect();
            registry.collect_matches(&channel, &mut out);
            assert_eq!(out.len(), expected.len(), "duplicates for {channel:?}");
            out.sort_unstable();
            assert!(out.iter().eq(expected.iter()), "{channel:?}");
        }
    }

    #[test]
    fn random_registry_agrees_with_pattern_matches() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut registry = Registry::new();
        let mut model = BTreeSet::new();

        for _ in 0..3000 {
            let pattern = random_pattern(&mut rng);
            let key = u32::try_from(rng.below(64)).unwrap();
            let inserted = model.insert((pattern.clone(), key));
            assert_eq!(
                registry.insert(&pattern, key),
                inserted,
                "{pattern:?} {key}"
            );
        }
        assert_agrees_with_reference(&registry, &model, &mut rng);

        for _ in 0..3000 {
            let pattern = random_pattern(&mut rng);
            let key = u32::try_from(rng.below(64)).unwrap();
            let removed = model.remove(&(pattern.clone(), key));
            assert_eq!(registry.remove(&pattern, key), removed, "{pattern:?} {key}");
        }
        assert_agrees_with_reference(&registry, &model, &mut rng);

        for (pattern, key) in std::mem::take(&mut model) {
            assert!(registry.remove(&pattern, key), "{pattern:?} {key}");
        }
        assert_agrees_with_reference(&registry, &model, &mut rng);
        assert!(registry.is_empty());
        assert_eq!(registry.node_count(), 0);
        assert_eq!(registry.patterns().count(), 0);
    }
}
