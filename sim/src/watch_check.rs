//! The `[watch]` checker: what clients' watch streams delivered, against the truth of the
//! store's history (every revision's events, read back after the run and cross-checked with
//! range reads of the final and sampled revisions).
//!
//! etcd's documented watch guarantees (https://etcd.io/docs/v3.5/learning/api_guarantees/#watch-apis),
//! each a named part of the message when it fails:
//! - **ordered**: events arrive in revision order; a watch never goes back.
//! - **unique**: no revision is delivered twice.
//! - **atomic**: a revision's events (those in the watched range) arrive together, in one
//!   response, all of them, in the order the write made them.
//! - **reliable**: no revision in the range is skipped between the watch's start and the
//!   last revision it is known to be complete to (its last event or progress revision; the
//!   harness makes every watch confirm the final revision with a progress request).
//! - **resumable**: a watch resumed (after its stream broke) from the last revision seen
//!   plus one gets exactly the rest: its session starts there and continues the checks.
//! - **bookmarkable**: a progress notification's revision P is at least the last event's
//!   revision, every event of the range at or below P was delivered before it, and no later
//!   event is at or below it.
//! - **prev_kv**: with prev_kv, every event but a create carries the key as it was at the
//!   revision before; without it, none does.
//! - **is_create**: a PUT is a create (create_revision == mod_revision, version 1) exactly
//!   when the key did not exist at the revision before.
//!
//! Every event's key-value must also equal the truth's. The truth is checked first: its
//! revisions are contiguous from 2 (etcd's store starts at revision 1 with nothing in it,
//! and every write that changes something is one revision with at least one event), each
//! PUT's create revision and version follow from the key's previous state, a DELETE removes
//! a key that exists, and replaying it gives the range reads.

use detcd_core::proto::mvccpb::{Event, KeyValue};
use std::collections::{BTreeMap, BTreeSet};

pub const PUT: i32 = 0;
pub const DELETE: i32 = 1;

/// What a watch covers, in etcd's conventions: `range_end` empty is the single key, `"\0"`
/// every key from `key` on, anything else `[key, range_end)`. An empty key is `"\0"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl KeyRange {
    pub fn single(key: &str) -> KeyRange {
        KeyRange {
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
        }
    }

    /// Every key starting with `prefix` (etcd's `--prefix`).
    pub fn prefix(prefix: &str) -> KeyRange {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a non-empty prefix") += 1;
        KeyRange {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
        }
    }

    pub fn all() -> KeyRange {
        KeyRange {
            key: vec![0],
            range_end: vec![0],
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        let key: &[u8] = if self.key.is_empty() { &[0] } else { &self.key };
        if self.range_end.is_empty() {
            k == key
        } else if self.range_end == [0] {
            k >= key
        } else {
            k >= key && k < self.range_end.as_slice()
        }
    }
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

fn show_event(e: &Event) -> String {
    let kv = e.kv.clone().unwrap_or_default();
    let kind = if e.r#type == DELETE { "DELETE" } else { "PUT" };
    format!(
        "{kind} {:?}={:?} (create {}, mod {}, version {}, lease {}){}",
        show(&kv.key),
        show(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease,
        match &e.prev_kv {
            Some(p) => format!(" prev {:?}@{}", show(&p.value), p.mod_revision),
            None => String::new(),
        }
    )
}

fn rev_of(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// The store's history: every revision's events, and every key's states.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    revs: BTreeMap<i64, Vec<Event>>,
    /// key -> (revision, the key after it: `None` once deleted), ascending.
    keys: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    /// The last revision (the store's revision when the truth was read).
    pub last: i64,
}

impl Truth {
    /// Builds the truth from every event from revision 1 through `last`, in order, checking
    /// that it is a history a store can have (see the module's note).
    pub fn build(events: &[Event], last: i64) -> Result<Truth, String> {
        let mut t = Truth {
            last,
            ..Truth::default()
        };
        let mut live: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        let mut prev_rev = 1;
        for e in events {
            let kv =
                e.kv.clone()
                    .ok_or_else(|| "[watch] truth: an event without a key-value".to_string())?;
            let r = kv.mod_revision;
            if r != prev_rev && r != prev_rev + 1 {
                return Err(format!(
                    "[watch] truth: revision {r} follows revision {prev_rev}: revisions in between \
                     have no events"
                ));
            }
            let here = t.revs.entry(r).or_default();
            if here
                .iter()
                .any(|o| o.kv.as_ref().map(|k| &k.key) == Some(&kv.key))
            {
                return Err(format!(
                    "[watch] truth: key {:?} changed twice in revision {r}",
                    show(&kv.key)
                ));
            }
            here.push(e.clone());
            prev_rev = r;
            let before = live.get(&kv.key);
            if e.r#type == DELETE {
                if before.is_none() {
                    return Err(format!(
                        "[watch] truth: revision {r} deletes {:?}, which does not exist",
                        show(&kv.key)
                    ));
                }
                let bare = KeyValue {
                    key: kv.key.clone(),
                    mod_revision: r,
                    ..Default::default()
                };
                if kv != bare {
                    return Err(format!(
                        "[watch] truth: a DELETE event carries more than its key and revision: {}",
                        show_event(e)
                    ));
                }
                live.remove(&kv.key);
                t.keys.entry(kv.key.clone()).or_default().push((r, None));
            } else {
                let (create, version) = match before {
                    None => (r, 1),
                    Some(b) => (b.create_revision, b.version + 1),
                };
                if (kv.create_revision, kv.version) != (create, version) {
                    return Err(format!(
                        "[watch] truth: is_create: {} should have create revision {create} and \
                         version {version}",
                        show_event(e)
                    ));
                }
                live.insert(kv.key.clone(), kv.clone());
                t.keys
                    .entry(kv.key.clone())
                    .or_default()
                    .push((r, Some(kv)));
            }
        }
        if prev_rev != last {
            return Err(format!(
                "[watch] truth: the events end at revision {prev_rev}, the store is at {last}"
            ));
        }
        Ok(t)
    }

    /// `kvs`, a range read of every key at `revision`, must be what replaying gives.
    pub fn check_state(&self, revision: i64, kvs: &[KeyValue]) -> Result<(), String> {
        let mut want: Vec<&KeyValue> = self
            .keys
            .keys()
            .filter_map(|k| self.state_at(k, revision))
            .collect();
        want.sort_by(|a, b| a.key.cmp(&b.key));
        let mut got: Vec<&KeyValue> = kvs.iter().collect();
        got.sort_by(|a, b| a.key.cmp(&b.key));
        if want != got {
            let w: BTreeSet<_> = want
                .iter()
                .map(|kv| (show(&kv.key), kv.mod_revision))
                .collect();
            let g: BTreeSet<_> = got
                .iter()
                .map(|kv| (show(&kv.key), kv.mod_revision))
                .collect();
            return Err(format!(
                "[watch] truth: a range read at revision {revision} differs from the replayed \
                 events: only read {:?}, only replayed {:?}",
                g.difference(&w).collect::<Vec<_>>(),
                w.difference(&g).collect::<Vec<_>>()
            ));
        }
        Ok(())
    }

    /// The key at `revision` (`None`: absent).
    pub fn state_at(&self, key: &[u8], revision: i64) -> Option<&KeyValue> {
        let h = self.keys.get(key)?;
        let i = h.partition_point(|(r, _)| *r <= revision);
        if i == 0 {
            return None;
        }
        h[i - 1].1.as_ref()
    }

    /// The events of `revision`.
    pub fn events_at(&self, revision: i64) -> &[Event] {
        self.revs.get(&revision).map_or(&[], |v| v.as_slice())
    }

    /// Every revision with its events, ascending.
    pub fn revisions(&self) -> impl Iterator<Item = (i64, &[Event])> {
        self.revs.iter().map(|(r, e)| (*r, e.as_slice()))
    }

    /// The revisions in `[from, to]` with events in `range`.
    fn matching(&self, range: &KeyRange, from: i64, to: i64) -> Vec<i64> {
        if from > to {
            return Vec::new();
        }
        self.revs
            .range(from..=to)
            .filter(|(_, evs)| evs.iter().any(|e| in_range(range, e)))
            .map(|(r, _)| *r)
            .collect()
    }

    fn expected(&self, range: &KeyRange, revision: i64) -> Vec<&Event> {
        self.events_at(revision)
            .iter()
            .filter(|e| in_range(range, e))
            .collect()
    }
}

fn in_range(range: &KeyRange, e: &Event) -> bool {
    e.kv.as_ref().is_some_and(|kv| range.contains(&kv.key))
}

/// One thing a watch stream delivered. Times are nanoseconds of simulated time.
#[derive(Clone, Debug)]
pub enum Item {
    /// The `created` answer and its header revision.
    Created { revision: i64 },
    /// A response with events.
    Events {
        at: u64,
        revision: i64,
        events: Vec<Event>,
    },
    /// The answer to a progress request (watch ID -1, no events).
    Progress { at: u64, revision: i64 },
    /// The watcher sent a progress request (for the report).
    ProgressAsked { at: u64 },
    /// The server canceled the watch.
    Canceled {
        compact_revision: i64,
        reason: String,
    },
}

/// One stream of a watch: created on `member` from `start_revision` (0: from now).
#[derive(Clone, Debug, Default)]
pub struct Session {
    pub member: String,
    pub start_revision: i64,
    pub items: Vec<Item>,
    /// How it ended (an error, a deliberate break, the end of the run).
    pub ended: String,
}

/// A client's watch, over the streams it took (resumed on each break).
#[derive(Clone, Debug)]
pub struct WatchLog {
    pub name: String,
    pub range: KeyRange,
    pub prev_kv: bool,
    pub sessions: Vec<Session>,
    /// The watch must be known complete through this revision (the store's revision at the
    /// end of the run; 0: no such requirement).
    pub complete_through: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    pub events: usize,
    pub responses: usize,
    pub progress: usize,
    pub sessions: usize,
}

/// Checks one watch against the truth; `Err` names the broken guarantee.
pub fn check_watch(truth: &Truth, log: &WatchLog) -> Result<WatchStats, String> {
    let mut stats = WatchStats::default();
    let range = &log.range;
    let fail = |si: usize, what: String| -> String {
        let s = &log.sessions[si];
        format!(
            "[watch] {what}\n  watch {:?} on [{:?}, {:?}) prev_kv={}, session {si} of {} on {} \
             from revision {}",
            log.name,
            show(&range.key),
            show(&range.range_end),
            log.prev_kv,
            log.sessions.len(),
            s.member,
            s.start_revision
        )
    };
    // The next revision the watch has yet to deliver, once known.
    let mut cursor: Option<i64> = None;
    let mut delivered: BTreeSet<i64> = BTreeSet::new();
    let mut last_event = 0i64;
    let mut last_progress = 0i64;
    for (si, s) in log.sessions.iter().enumerate() {
        let resumed = si > 0 && cursor.is_some();
        let part = |g: &str| {
            if resumed {
                format!("resumable ({g})")
            } else {
                g.to_string()
            }
        };
        let mut cur = if s.start_revision > 0 {
            if let Some(c) = cursor {
                if s.start_revision != c {
                    return Err(fail(
                        si,
                        format!(
                            "resumable: resumed from revision {}, but everything before {c} was \
                             delivered",
                            s.start_revision
                        ),
                    ));
                }
            }
            Some(s.start_revision)
        } else {
            cursor
        };
        let mut first = true;
        // The last event revision on this stream: a progress answer must not be below it.
        // (A member behind the one a watch resumed from may answer with a revision below
        // what earlier streams delivered: that claims nothing new.)
        let mut stream_last = 0i64;
        for (ii, item) in s.items.iter().enumerate() {
            match item {
                Item::ProgressAsked { .. } => {}
                Item::Created { revision } => {
                    if cur.is_none() {
                        cur = Some(revision + 1);
                    }
                }
                Item::Canceled {
                    compact_revision,
                    reason,
                } => {
                    return Err(fail(
                        si,
                        format!(
                            "the server canceled the watch (compact revision \
                             {compact_revision}, reason {reason:?}); nothing was compacted"
                        ),
                    ))
                }
                Item::Events {
                    revision: header,
                    events,
                    ..
                } => {
                    let Some(mut c) = cur else {
                        return Err(fail(si, "ordered: events before `created`".into()));
                    };
                    stats.responses += 1;
                    let mut groups: Vec<(i64, Vec<&Event>)> = Vec::new();
                    for e in events {
                        let r = rev_of(e);
                        match groups.last_mut() {
                            Some((gr, g)) if *gr == r => g.push(e),
                            Some((gr, _)) if *gr > r => {
                                return Err(fail(
                                    si,
                                    format!(
                                        "ordered: revision {r} after revision {gr} in one response"
                                    ),
                                ))
                            }
                            _ => groups.push((r, vec![e])),
                        }
                    }
                    for (r, evs) in groups {
                        if r < c {
                            let what = if delivered.contains(&r) {
                                format!("unique: revision {r} delivered again")
                            } else if r <= last_progress {
                                format!(
                                    "bookmarkable: an event at revision {r} after a progress \
                                     notification at {last_progress}"
                                )
                            } else {
                                format!(
                                    "ordered: revision {r} delivered after revision {} (the \
                                     watch was at {c})",
                                    last_event.max(c - 1)
                                )
                            };
                            return Err(fail(si, part(&what)));
                        }
                        let missed = truth.matching(range, c, r - 1);
                        if let Some(m) = missed.first() {
                            if let Some(later) = arrives_later(log, si, ii, *m) {
                                return Err(fail(
                                    si,
                                    part(&format!(
                                        "ordered: revision {r} arrived before revision {m} \
                                         (which came in {later})"
                                    )),
                                ));
                            }
                            let evs: Vec<String> = truth
                                .expected(range, *m)
                                .iter()
                                .map(|e| show_event(e))
                                .collect();
                            return Err(fail(
                                si,
                                part(&format!(
                                    "reliable: revision {m} ({evs:?}) was skipped: the watch went \
                                     from {c} to revision {r}{}",
                                    if first {
                                        " (its first events in this session)"
                                    } else {
                                        ""
                                    }
                                )),
                            ));
                        }
                        let want = truth.expected(range, r);
                        if want.is_empty() {
                            return Err(fail(
                                si,
                                format!(
                                    "revision {r} delivered, but it has no events in the range: \
                                     {:?}",
                                    evs.iter().map(|e| show_event(e)).collect::<Vec<_>>()
                                ),
                            ));
                        }
                        check_revision(truth, log.prev_kv, r, &evs, &want)
                            .map_err(|e| fail(si, e))?;
                        if *header < r {
                            return Err(fail(
                                si,
                                format!(
                                    "ordered: a response's header revision {header} is below \
                                     its event revision {r}"
                                ),
                            ));
                        }
                        delivered.insert(r);
                        stats.events += evs.len();
                        last_event = r;
                        stream_last = r;
                        c = r + 1;
                        first = false;
                    }
                    cur = Some(c);
                }
                Item::Progress { revision: p, .. } => {
                    let Some(c) = cur else {
                        return Err(fail(si, "bookmarkable: progress before `created`".into()));
                    };
                    stats.progress += 1;
                    if *p < stream_last {
                        return Err(fail(
                            si,
                            format!(
                                "bookmarkable: progress notification at revision {p}, below the \
                                 last event's revision {stream_last}"
                            ),
                        ));
                    }
                    if let Some(m) = truth.matching(range, c, *p).first() {
                        return Err(fail(
                            si,
                            format!(
                                "bookmarkable: progress notification at revision {p}, but \
                                 revision {m} of the range (at or below it) was not delivered \
                                 before it (the watch was at {c})"
                            ),
                        ));
                    }
                    last_progress = last_progress.max(*p);
                    cur = Some(c.max(p + 1));
                }
            }
        }
        if cur.is_some() {
            cursor = cur;
        }
        stats.sessions += 1;
    }
    let Some(c) = cursor else {
        return Err(format!(
            "[watch] watch {:?} was never created ({} sessions)",
            log.name,
            log.sessions.len()
        ));
    };
    if log.complete_through > 0 && c <= log.complete_through {
        let missed = truth.matching(range, c, log.complete_through);
        return Err(format!(
            "[watch] reliable: watch {:?} is complete only through revision {}, not the final \
             {}; revisions of its range after it: {missed:?}",
            log.name,
            c - 1,
            log.complete_through
        ));
    }
    Ok(stats)
}

/// Where (a later response of the watch, after item `ii` of session `si`) revision `m`
/// arrives, if it does.
fn arrives_later(log: &WatchLog, si: usize, ii: usize, m: i64) -> Option<String> {
    for (sj, s) in log.sessions.iter().enumerate().skip(si) {
        let from = if sj == si { ii + 1 } else { 0 };
        for (ij, item) in s.items.iter().enumerate().skip(from) {
            if let Item::Events { events, .. } = item {
                if events.iter().any(|e| rev_of(e) == m) {
                    return Some(format!("session {sj}, response {ij}"));
                }
            }
        }
    }
    None
}

/// One revision's events as delivered (`got`) against the truth (`want`, in the range).
fn check_revision(
    truth: &Truth,
    prev_kv: bool,
    r: i64,
    got: &[&Event],
    want: &[&Event],
) -> Result<(), String> {
    let strip = |e: &Event| Event {
        prev_kv: None,
        ..e.clone()
    };
    if got.len() != want.len() {
        return Err(format!(
            "atomic: revision {r} delivered {} of its {} events in one response: got {:?}, \
             the revision has {:?}",
            got.len(),
            want.len(),
            got.iter().map(|e| show_event(e)).collect::<Vec<_>>(),
            want.iter().map(|e| show_event(e)).collect::<Vec<_>>()
        ));
    }
    for (g, w) in got.iter().zip(want) {
        let kv = g.kv.clone().unwrap_or_default();
        let before = truth.state_at(&kv.key, r - 1);
        if g.r#type == PUT {
            let create = kv.create_revision == kv.mod_revision || kv.version == 1;
            let was_create = before.is_none();
            if create != was_create || (kv.create_revision == kv.mod_revision) != (kv.version == 1)
            {
                return Err(format!(
                    "is_create: {} but the key {} at revision {}",
                    show_event(g),
                    if was_create {
                        "did not exist"
                    } else {
                        "existed"
                    },
                    r - 1
                ));
            }
        }
        if strip(g) != strip(w) {
            return Err(format!(
                "atomic: revision {r} delivered {}, the revision has {} (in that place)",
                show_event(g),
                show_event(w)
            ));
        }
        let want_prev = if !prev_kv || (g.r#type == PUT && kv.create_revision == kv.mod_revision) {
            None
        } else {
            before.cloned()
        };
        if g.prev_kv != want_prev {
            return Err(format!(
                "prev_kv: {} carries prev_kv {:?}, the key at revision {} was {:?} (watch \
                 prev_kv={prev_kv})",
                show_event(g),
                g.prev_kv.as_ref().map(|p| (show(&p.value), p.mod_revision)),
                r - 1,
                want_prev.as_ref().map(|p| (show(&p.value), p.mod_revision))
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, create: i64, rev: i64, version: i64) -> Event {
        Event {
            r#type: PUT,
            kv: Some(KeyValue {
                key: key.into(),
                value: value.into(),
                create_revision: create,
                mod_revision: rev,
                version,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn del(key: &str, rev: i64) -> Event {
        Event {
            r#type: DELETE,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    /// Revisions 2..=7: a, b (one txn: a and b at 3), a deleted, c, a recreated, b updated.
    fn history() -> Vec<Event> {
        vec![
            put("w/a", "1", 2, 2, 1),
            put("w/a", "2", 2, 3, 2),
            put("w/b", "1", 3, 3, 1),
            del("w/a", 4),
            put("w/c", "1", 5, 5, 1),
            put("w/a", "3", 6, 6, 1),
            put("w/b", "2", 3, 7, 2),
        ]
    }

    fn truth() -> Truth {
        Truth::build(&history(), 7).unwrap()
    }

    fn with_prev(t: &Truth, e: &Event) -> Event {
        let kv = e.kv.clone().unwrap();
        let mut e = e.clone();
        if !(e.r#type == PUT && kv.create_revision == kv.mod_revision) {
            e.prev_kv = t.state_at(&kv.key, kv.mod_revision - 1).cloned();
        }
        e
    }

    fn resp(at: u64, events: Vec<Event>) -> Item {
        let revision = events.iter().map(rev_of).max().unwrap();
        Item::Events {
            at,
            revision,
            events,
        }
    }

    /// The prefix watch "w/" from revision 2, with prev_kv, as a correct server sends it:
    /// one response per revision, a progress at the end.
    fn good_log(t: &Truth) -> WatchLog {
        let mut items = vec![Item::Created { revision: 1 }];
        for (r, evs) in t.revisions() {
            items.push(resp(
                r as u64,
                evs.iter().map(|e| with_prev(t, e)).collect(),
            ));
        }
        items.push(Item::Progress { at: 9, revision: 7 });
        WatchLog {
            name: "w".into(),
            range: KeyRange::prefix("w/"),
            prev_kv: true,
            sessions: vec![Session {
                member: "m0".into(),
                start_revision: 2,
                items,
                ended: String::new(),
            }],
            complete_through: 7,
        }
    }

    fn items(log: &mut WatchLog) -> &mut Vec<Item> {
        &mut log.sessions[0].items
    }

    fn fails_with(log: &WatchLog, part: &str) {
        let e = check_watch(&truth(), log).expect_err("the doctored stream passed");
        assert!(e.starts_with("[watch] "), "{e}");
        assert!(e.contains(part), "expected {part:?} in: {e}");
    }

    #[test]
    fn a_correct_stream_passes() {
        let t = truth();
        let s = check_watch(&t, &good_log(&t)).unwrap();
        assert_eq!((s.events, s.responses, s.progress), (7, 6, 1));
    }

    #[test]
    fn ranges_follow_etcds_conventions() {
        assert!(KeyRange::single("a").contains(b"a") && !KeyRange::single("a").contains(b"ab"));
        let p = KeyRange::prefix("w/");
        assert!(
            p.contains(b"w/") && p.contains(b"w/zz") && !p.contains(b"w0") && !p.contains(b"v")
        );
        assert!(KeyRange::all().contains(b"") || KeyRange::all().contains(b"\0"));
        assert!(KeyRange::all().contains(b"anything"));
    }

    #[test]
    fn a_single_key_watch_from_now_passes() {
        let t = truth();
        let log = WatchLog {
            name: "a".into(),
            range: KeyRange::single("w/a"),
            prev_kv: false,
            sessions: vec![Session {
                member: "m1".into(),
                start_revision: 0,
                items: vec![
                    Item::Created { revision: 3 },
                    resp(1, vec![del("w/a", 4)]),
                    Item::Progress { at: 2, revision: 5 },
                    resp(3, vec![put("w/a", "3", 6, 6, 1)]),
                    Item::Progress { at: 4, revision: 7 },
                ],
                ended: String::new(),
            }],
            complete_through: 7,
        };
        check_watch(&t, &log).unwrap();
    }

    #[test]
    fn ordered_fails_on_a_revision_going_back() {
        let t = truth();
        let mut log = good_log(&t);
        items(&mut log).swap(2, 3);
        fails_with(&log, "ordered");
    }

    #[test]
    fn unique_fails_on_a_revision_sent_twice() {
        let t = truth();
        let mut log = good_log(&t);
        let again = items(&mut log)[3].clone();
        items(&mut log).insert(4, again);
        fails_with(&log, "unique");
    }

    #[test]
    fn atomic_fails_on_a_revision_split_over_responses() {
        let t = truth();
        let mut log = good_log(&t);
        // Revision 3 (a and b) sent as two responses.
        let Item::Events { events, .. } = items(&mut log)[2].clone() else {
            panic!()
        };
        items(&mut log)[2] = resp(3, vec![events[0].clone()]);
        items(&mut log).insert(3, resp(3, vec![events[1].clone()]));
        fails_with(&log, "atomic");
    }

    #[test]
    fn reliable_fails_on_a_skipped_revision() {
        let t = truth();
        let mut log = good_log(&t);
        items(&mut log).remove(4); // revision 5
        fails_with(&log, "reliable: revision 5");
    }

    #[test]
    fn reliable_fails_when_the_end_is_missing() {
        let t = truth();
        let mut log = good_log(&t);
        items(&mut log).truncate(6); // through revision 6, no progress
        fails_with(&log, "complete only through revision 6");
    }

    #[test]
    fn resumable_fails_on_a_resumed_session_that_skips_or_repeats() {
        let t = truth();
        let mut log = good_log(&t);
        let rest: Vec<Item> = items(&mut log).drain(4..).collect();
        // Resumed from 5 on another member: a correct resume passes.
        log.sessions.push(Session {
            member: "m2".into(),
            start_revision: 5,
            items: std::iter::once(Item::Created { revision: 7 })
                .chain(rest.clone())
                .collect(),
            ended: String::new(),
        });
        check_watch(&t, &log).unwrap();
        // A resumed stream that starts one revision late.
        let mut late = log.clone();
        late.sessions[1].items.remove(1);
        fails_with(&late, "resumable (reliable: revision 5");
        // A resumed stream that repeats the last revision seen.
        let mut again = log.clone();
        let Item::Events { events, .. } = good_log(&t).sessions[0].items[3].clone() else {
            panic!()
        };
        again.sessions[1].items.insert(1, resp(1, events));
        fails_with(&again, "resumable (unique: revision 4");
        // Resuming from a revision other than the last seen + 1.
        let mut wrong = log.clone();
        wrong.sessions[1].start_revision = 6;
        fails_with(&wrong, "resumable: resumed from revision 6");
    }

    #[test]
    fn bookmarkable_fails_on_a_progress_ahead_of_undelivered_events() {
        let t = truth();
        let mut log = good_log(&t);
        // Progress at 6 answered before revisions 5 and 6 went out.
        items(&mut log).insert(4, Item::Progress { at: 4, revision: 6 });
        fails_with(
            &log,
            "bookmarkable: progress notification at revision 6, but revision 5",
        );
    }

    #[test]
    fn bookmarkable_fails_on_a_progress_below_the_last_event() {
        let t = truth();
        let mut log = good_log(&t);
        items(&mut log).insert(5, Item::Progress { at: 5, revision: 4 });
        fails_with(&log, "below the last event's revision 5");
    }

    #[test]
    fn prev_kv_fails_on_a_wrong_or_missing_previous_value() {
        let t = truth();
        let mut log = good_log(&t);
        if let Item::Events { events, .. } = &mut items(&mut log)[3] {
            events[0].prev_kv = None; // the delete of w/a at 4 must carry "2"
        }
        fails_with(&log, "prev_kv: DELETE");
        let mut log = good_log(&t);
        log.prev_kv = false; // a watch without prev_kv gets none
        fails_with(&log, "prev_kv");
        let mut log = good_log(&t);
        if let Item::Events { events, .. } = &mut items(&mut log)[5] {
            // the recreate of w/a at 6 has no previous version
            events[0].prev_kv = t.state_at(b"w/a", 3).cloned();
        }
        fails_with(&log, "prev_kv: PUT \"w/a\"=\"3\"");
    }

    #[test]
    fn is_create_fails_on_a_wrong_create_flag() {
        let t = truth();
        let mut log = good_log(&t);
        if let Item::Events { events, .. } = &mut items(&mut log)[5] {
            let kv = events[0].kv.as_mut().unwrap();
            kv.create_revision = 2; // claims w/a lived on through its delete
            kv.version = 2;
        }
        fails_with(&log, "is_create");
        let mut log = good_log(&t);
        if let Item::Events { events, .. } = &mut items(&mut log)[6] {
            let kv = events[0].kv.as_mut().unwrap();
            kv.create_revision = 7; // an update presented as a create
            kv.version = 1;
        }
        fails_with(&log, "is_create");
    }

    #[test]
    fn a_canceled_watch_fails() {
        let t = truth();
        let mut log = good_log(&t);
        items(&mut log).insert(
            2,
            Item::Canceled {
                compact_revision: 3,
                reason: String::new(),
            },
        );
        fails_with(&log, "canceled");
    }

    #[test]
    fn the_truth_must_be_a_possible_history() {
        let mut h = history();
        h.remove(4); // revision 5 missing
        let e = Truth::build(&h, 7).unwrap_err();
        assert!(e.contains("have no events"), "{e}");
        let mut h = history();
        h[5] = put("w/a", "3", 2, 6, 3); // a recreate that keeps the old create revision
        assert!(Truth::build(&h, 7).unwrap_err().contains("is_create"));
        let h = vec![del("w/x", 2)];
        assert!(Truth::build(&h, 2).unwrap_err().contains("does not exist"));
        assert!(Truth::build(&history(), 8)
            .unwrap_err()
            .contains("end at revision 7"));
        let t = truth();
        let at5: Vec<KeyValue> = [b"w/b".as_slice(), b"w/c"]
            .iter()
            .map(|k| t.state_at(k, 5).unwrap().clone())
            .collect();
        t.check_state(5, &at5).unwrap();
        assert!(t
            .check_state(6, &at5)
            .unwrap_err()
            .contains("range read at revision 6"));
    }
}
