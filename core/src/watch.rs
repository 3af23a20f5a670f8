//! The pure rules of etcd's Watch (etcdserver/api/v3rpc/watch.go, mvcc/watcher.go): which
//! events a watcher takes, how watch IDs are given out, how a large response is fragmented.
//! The streams, the hub that publishes applied events to them and the catch-up from history
//! are the executor's (net/src/watch.rs).

use crate::proto::etcdserverpb::WatchResponse;
use crate::proto::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use crate::proto::mvccpb::{event::EventType, Event};
use prost::Message as _;
use std::collections::BTreeMap;

/// etcd's answer to a watch it cannot create (sent as `cancel_reason`, with watch_id -1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchCreateError {
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
}

/// What one watcher asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// Empty: only `key`; `[0]`... see [`WatchSpec::covers`].
    pub range_end: Vec<u8>,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub fragment: bool,
    pub progress_notify: bool,
}

impl WatchSpec {
    /// etcd's reading of a create request: an empty key is `"\0"`; a range end of `"\0"`
    /// means every key from `key` on; a range end at or below the key is an empty range
    /// (refused). Unknown filter values are ignored.
    pub fn from_request(req: &WatchCreateRequest) -> Result<WatchSpec, WatchCreateError> {
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.clone()
        };
        let range_end = req.range_end.clone();
        if !range_end.is_empty() && range_end != [0] && key >= range_end {
            return Err(WatchCreateError::EmptyRange);
        }
        let has = |f: FilterType| req.filters.contains(&(f as i32));
        Ok(WatchSpec {
            key,
            range_end,
            no_put: has(FilterType::Noput),
            no_delete: has(FilterType::Nodelete),
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
        })
    }

    /// Whether `key` is in the watched range.
    pub fn covers(&self, key: &[u8]) -> bool {
        match self.range_end.as_slice() {
            [] => key == self.key.as_slice(),
            [0] => key >= self.key.as_slice(),
            end => key >= self.key.as_slice() && key < end,
        }
    }

    /// Whether this watcher takes `event` (its key in range, its type not filtered out).
    pub fn takes(&self, event: &Event) -> bool {
        let Some(kv) = &event.kv else {
            return false;
        };
        let filtered = if event.r#type == EventType::Put as i32 {
            self.no_put
        } else {
            self.no_delete
        };
        !filtered && self.covers(&kv.key)
    }

    /// The events of `events` this watcher takes, from revision `from` on.
    pub fn select<'a>(&'a self, events: &'a [Event], from: i64) -> impl Iterator<Item = &'a Event> {
        events.iter().filter(move |e| {
            e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= from) && self.takes(e)
        })
    }
}

/// The watch IDs of one stream (etcd's watchStream.Watch): a client-chosen ID is taken as
/// given, unless in use; ID 0 means "assign one": a counter from 0 that skips IDs in use.
#[derive(Debug, Default)]
pub struct WatchIds {
    next: i64,
}

impl WatchIds {
    pub fn assign<T>(
        &mut self,
        requested: i64,
        in_use: &BTreeMap<i64, T>,
    ) -> Result<i64, WatchCreateError> {
        if requested != 0 {
            if in_use.contains_key(&requested) {
                return Err(WatchCreateError::DuplicateId);
            }
            return Ok(requested);
        }
        while in_use.contains_key(&self.next) {
            self.next += 1;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}

/// etcd splits a response of a watcher created with `fragment` when its encoded size reaches
/// `limit` (`--max-request-bytes` plus 512 KiB) and it has at least two events: events go
/// greedily into copies of it, each at least one event, all but the last marked `fragment`
/// (watch.go sendFragments). Otherwise the response goes whole.
pub fn fragment(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if resp.events.len() < 2 || resp.encoded_len() < limit {
        return vec![resp];
    }
    let shell = WatchResponse {
        events: Vec::new(),
        ..resp.clone()
    };
    let mut out = Vec::new();
    let mut cur = shell.clone();
    for ev in resp.events {
        cur.events.push(ev);
        if cur.events.len() > 1 && cur.encoded_len() >= limit {
            let ev = cur.events.pop().expect("just pushed");
            let mut full = std::mem::replace(&mut cur, shell.clone());
            full.fragment = true;
            out.push(full);
            cur.events.push(ev);
        }
    }
    cur.fragment = false;
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn create(key: &str, end: &str) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn ev(key: &str, rev: i64, delete: bool) -> Event {
        Event {
            r#type: if delete { 1 } else { 0 },
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: rev,
                value: vec![b'x'; 100],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn ranges_follow_etcds_conventions() {
        let single = WatchSpec::from_request(&create("a", "")).unwrap();
        assert!(single.covers(b"a") && !single.covers(b"ab"));
        let prefix = WatchSpec::from_request(&create("a", "b")).unwrap();
        assert!(prefix.covers(b"a") && prefix.covers(b"azz") && !prefix.covers(b"b"));
        let from = WatchSpec::from_request(&create("m", "\0")).unwrap();
        assert!(from.covers(b"m") && from.covers(b"zzz") && !from.covers(b"a"));
        let all = WatchSpec::from_request(&create("", "\0")).unwrap();
        assert!(all.covers(b"\0") && all.covers(b"a"));
        assert_eq!(
            WatchSpec::from_request(&create("b", "a")),
            Err(WatchCreateError::EmptyRange)
        );
        assert_eq!(
            WatchSpec::from_request(&create("a", "a")),
            Err(WatchCreateError::EmptyRange)
        );
    }

    #[test]
    fn filters_and_start_revision_select_events() {
        let mut req = create("a", "b");
        req.filters = vec![FilterType::Nodelete as i32];
        let spec = WatchSpec::from_request(&req).unwrap();
        let evs = [
            ev("a", 2, false),
            ev("a", 3, true),
            ev("c", 4, false),
            ev("a1", 5, false),
        ];
        let got: Vec<i64> = spec
            .select(&evs, 3)
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!(got, vec![5]);
    }

    #[test]
    fn ids_are_assigned_from_zero_skipping_those_in_use() {
        let mut ids = WatchIds::default();
        let mut used = BTreeMap::new();
        used.insert(1, ());
        assert_eq!(ids.assign(0, &used), Ok(0));
        used.insert(0, ());
        assert_eq!(ids.assign(0, &used), Ok(2));
        assert_eq!(ids.assign(7, &used), Ok(7));
        assert_eq!(ids.assign(1, &used), Err(WatchCreateError::DuplicateId));
    }

    #[test]
    fn large_responses_split_into_fragments_of_at_least_one_event() {
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| ev("k", i + 2, false)).collect(),
            ..Default::default()
        };
        let size = resp.encoded_len();
        assert_eq!(fragment(resp.clone(), size + 1).len(), 1);
        let parts = fragment(resp.clone(), 350);
        assert!(parts.len() > 1);
        assert!(parts
            .iter()
            .all(|p| !p.events.is_empty() && p.watch_id == 3));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, resp.events);
        // Tiny limit: one event each.
        assert_eq!(fragment(resp, 1).len(), 10);
    }
}
