//! The in-memory key index: for every user key, the ordered list of revisions at which it was
//! written or deleted. It plays the part of etcd's treeIndex/keyIndex; instead of generations
//! it keeps a flat event list with a tombstone flag, which answers the same questions:
//! "which revision of this key is visible at main revision R" is the last event whose main is
//! `<= R`, and the key is absent at R if that event is a tombstone (or there is none).
//!
//! Values are not kept here: a revision found in the index is read from the KV table.

use std::collections::HashSet;
use std::ops::Bound;

/// A revision: `main` is bumped once per write transaction, `sub` counts the changes inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// One change of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub rev: Revision,
    pub tombstone: bool,
}

/// Which keys a request covers, after etcd's conventions on `range_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyRange<'a> {
    /// `range_end` empty: exactly `key`.
    Single(&'a [u8]),
    /// `range_end == "\0"`: every key `>= key`.
    From(&'a [u8]),
    /// `[key, range_end)`; empty when `range_end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    /// etcd's reading of a (key, range_end) pair (`mkGteRange` plus the index's nil-end rule).
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }
}

/// A persistent (copy-on-write) ordered map, so cloning the index for a reader is O(1) and
/// a long range never holds up apply (see `Mvcc::clone`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Index {
    keys: imbl::OrdMap<Vec<u8>, Vec<Event>>,
    /// Keys whose last event is not a tombstone (they exist now): kept by `push` and `pop`
    /// (a compaction never changes a key's last event, or drops a key that exists).
    live: usize,
}

/// Whether a key with these events exists at the latest revision.
fn exists(events: &[Event]) -> bool {
    events.last().is_some_and(|e| !e.tombstone)
}

/// What a compaction removes: for each affected key, how many leading events go.
pub(crate) struct CompactPlan {
    pub drops: Vec<(Vec<u8>, usize)>,
    /// The KV rows to delete: (revision, tombstone).
    pub rows: Vec<(Revision, bool)>,
}

fn visible(events: &[Event], at: i64) -> Option<Revision> {
    let n = events.partition_point(|e| e.rev.main <= at);
    match n.checked_sub(1).map(|i| events[i]) {
        Some(e) if !e.tombstone => Some(e.rev),
        _ => None,
    }
}

impl Index {
    /// The revision of `key` visible at main revision `at`, if the key exists then.
    pub fn get(&self, key: &[u8], at: i64) -> Option<Revision> {
        self.keys.get(key).and_then(|evs| visible(evs, at))
    }

    /// Every key of the range that exists at `at`, in key order, with its visible revision.
    pub fn range(&self, range: KeyRange<'_>, at: i64) -> Vec<(&[u8], Revision)> {
        type Entries<'m> = Box<dyn Iterator<Item = (&'m Vec<u8>, &'m Vec<Event>)> + 'm>;
        let entries: Entries<'_> = match range {
            KeyRange::Single(key) => Box::new(self.keys.get_key_value(key).into_iter()),
            KeyRange::From(key) => Box::new(
                self.keys
                    .range::<_, [u8]>((Bound::Included(key), Bound::Unbounded)),
            ),
            KeyRange::Between(key, end) if key < end => Box::new(
                self.keys
                    .range::<_, [u8]>((Bound::Included(key), Bound::Excluded(end))),
            ),
            KeyRange::Between(..) => Box::new(std::iter::empty()),
        };
        entries
            .filter_map(|(k, evs)| visible(evs, at).map(|rev| (k.as_slice(), rev)))
            .collect()
    }

    /// Appends one change (revisions only grow, so the list stays ordered).
    pub fn push(&mut self, key: &[u8], ev: Event) {
        let evs = self.keys.entry(key.to_vec()).or_default();
        debug_assert!(evs.last().is_none_or(|l| l.rev < ev.rev));
        let before = exists(evs);
        evs.push(ev);
        self.count_change(before, !ev.tombstone);
    }

    fn count_change(&mut self, before: bool, after: bool) {
        match (before, after) {
            (false, true) => self.live += 1,
            (true, false) => self.live -= 1,
            _ => {}
        }
    }

    /// How many keys exist at the latest revision (etcd's keysGauge).
    pub fn live_keys(&self) -> usize {
        self.live
    }

    /// Undoes the last `push` for `key`.
    pub fn pop(&mut self, key: &[u8]) {
        let mut change = None;
        if let Some(evs) = self.keys.get_mut(key) {
            let before = exists(evs);
            evs.pop();
            change = Some((before, exists(evs)));
            if evs.is_empty() {
                self.keys.remove(key);
            }
        }
        if let Some((before, after)) = change {
            self.count_change(before, after);
        }
    }

    /// etcd's compaction rule, computed without changing anything: for each key, every event
    /// with main `<= at` goes except the last one, and that one goes too if it is a tombstone.
    pub fn compact_plan(&self, at: i64) -> CompactPlan {
        let mut plan = CompactPlan {
            drops: Vec::new(),
            rows: Vec::new(),
        };
        for (k, evs) in &self.keys {
            let n = evs.partition_point(|e| e.rev.main <= at);
            if n == 0 {
                continue;
            }
            let drop = if evs[n - 1].tombstone { n } else { n - 1 };
            if drop > 0 {
                plan.rows
                    .extend(evs[..drop].iter().map(|e| (e.rev, e.tombstone)));
                plan.drops.push((k.clone(), drop));
            }
        }
        plan
    }

    /// The events at or below `compacted` that etcd's HashKV at `at` counts (mvcc/kvstore.go
    /// `HashByRev`): those a compaction at `at` would keep (`Keep(at)`: each key's last event
    /// at or below `at`, unless a tombstone), or, when it would keep none, all of them.
    pub fn hashed_below(&self, at: i64, compacted: i64) -> HashSet<(Revision, bool)> {
        let mut present = HashSet::new();
        let mut kept = HashSet::new();
        let mut any_kept = false;
        for evs in self.keys.values() {
            for e in evs.iter().take_while(|e| e.rev.main <= compacted) {
                present.insert((e.rev, e.tombstone));
            }
            let n = evs.partition_point(|e| e.rev.main <= at);
            if n > 0 && !evs[n - 1].tombstone {
                any_kept = true;
                if evs[n - 1].rev.main <= compacted {
                    kept.insert((evs[n - 1].rev, false));
                }
            }
        }
        if any_kept {
            kept
        } else {
            present
        }
    }

    pub fn apply_compaction(&mut self, plan: CompactPlan) {
        for (k, drop) in plan.drops {
            if let Some(evs) = self.keys.get_mut(&k) {
                evs.drain(..drop);
                if evs.is_empty() {
                    self.keys.remove(&k);
                }
            }
        }
    }

    /// Number of events held (one per KV row).
    #[cfg(test)]
    pub fn event_count(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<Event>)> {
        self.keys.iter()
    }
}
