//! The `[lease]` checker: what a client did with its leases (grants, keep-alives, revokes,
//! with simulated times), against the truth of the store's history
//! ([`crate::watch_check::Truth`]) and a timeline of when revisions were known to exist.
//!
//! Each leased key belongs to one lease and is written once, with it; nothing else deletes
//! it, so every DELETE of a leased key is its lease's revoke (by a client or by expiry).
//!
//! - **kept alive**: a keep-alive sent at `t` and answered with TTL > 0 renewed the lease at
//!   or after `t`, so the lease cannot expire before `t + TTL` (a new leader only extends
//!   it), less one tick of the leader's lease clock ([`ExpiryBound::tick_ns`]). Its keys'
//!   deletion must not be seen (by any client) before that, unless the client revoked the
//!   lease itself earlier; nor can a keep-alive sent after the deletion was seen succeed.
//! - **expires**: once keep-alives stop at `s`, the keys are gone by
//!   `s + TTL + ExpiryBound` (see [`ExpiryBound`] for the parts), counted again from every
//!   leader change seen before that deadline (a new leader counts every lease afresh), and
//!   from the healing of the cluster if they stopped while faults were on. "Not gone" is
//!   proven by an operation invoked after the deadline whose answer shows a revision below
//!   the deletion (or by the key never being deleted at all).
//! - **revoke is atomic**: all of a lease's keys go in one revision holding nothing else;
//!   a revoke answered with success has removed them by its header revision.

use crate::watch_check::{Truth, DELETE};
use std::collections::{BTreeMap, BTreeSet};

const SEC: u64 = 1_000_000_000;

/// One keep-alive request: sent at `sent`, answered at `answered` with `ttl` (> 0: renewed,
/// 0: the lease is gone) or not answered (`None`).
#[derive(Clone, Debug)]
pub struct KeepAlive {
    pub sent: u64,
    pub answered: Option<u64>,
    pub ttl: Option<i64>,
}

/// An explicit revoke: invoked at `invoked`; `revision` is the success answer's header
/// revision (`None`: failed, unknown or not found).
#[derive(Clone, Debug)]
pub struct Revoke {
    pub invoked: u64,
    pub revision: Option<i64>,
}

/// One lease as its client saw it.
#[derive(Clone, Debug)]
pub struct LeaseLog {
    pub id: i64,
    /// The granted TTL, seconds (the grant's answer).
    pub ttl: i64,
    pub keepalives: Vec<KeepAlive>,
    /// When the client stopped keeping it alive: after the answer to its last keep-alive
    /// (`clean`), or after giving up on an unanswered one, which may still renew it later.
    pub stopped: Option<u64>,
    pub clean: bool,
    pub revokes: Vec<Revoke>,
}

impl LeaseLog {
    fn first_revoke(&self) -> u64 {
        self.revokes
            .iter()
            .map(|r| r.invoked)
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// The parts of the bound on how long after its keep-alives stop a lease's keys may stay.
/// The deadline is `base + TTL + extend + slack (+ revoke_retry)`.
#[derive(Clone, Copy, Debug)]
pub struct ExpiryBound {
    /// A new leader counts every lease from its promotion plus an election timeout
    /// (etcd's Promote(extend); 1 s with the default --election-timeout).
    pub extend_ns: u64,
    /// The leader finds expired leases on its ticks (every heartbeat, 100 ms), proposes the
    /// revoke, commits and applies it; a client sees the deletion; a leader change is seen
    /// by polling (every 100 ms), and the new leader promotes after committing its first
    /// entry: all of this on a healthy network.
    pub slack_ns: u64,
    /// A revoke proposal lost without a leader change is proposed again after this (etcd's
    /// expiredLeaseRetryInterval; core::lease::REVOKE_RETRY_MS); counted for leases whose
    /// keep-alives stopped while faults were on.
    pub revoke_retry_ns: u64,
    /// detcd's lease clock is the leader's tick count (core/src/lease.rs: `advance` on each
    /// heartbeat tick), so a renewal counts its TTL from the last tick, up to one tick
    /// (100 ms) before the keep-alive arrived: a renewed lease may end this much before
    /// `sent + TTL`. (etcd's lessor reads the clock at the renewal.)
    pub tick_ns: u64,
    /// An unanswered keep-alive may still renew the lease this long after it was sent (a
    /// follower forwards it to the leader, retrying for its request timeout, each forward
    /// waiting up to the request timeout: 2 x 7 s).
    pub unanswered_ns: u64,
}

/// What else the run tells about time.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// (time, revision): at `time` a client knew revision `revision` existed (an answer's
    /// header revision, a watch event).
    pub seen: Vec<(u64, i64)>,
    /// (time, revision): an operation invoked at `time` was answered with header revision
    /// `revision` (a write at that revision, or a linearizable read): no later revision
    /// existed at `time`.
    pub before: Vec<(u64, i64)>,
    /// Times a new leader (a higher term) was first seen.
    pub leader_changes: Vec<u64>,
    /// When the healed cluster served again (faults over).
    pub healed: u64,
    /// The end of the run (when the truth was read).
    pub end: u64,
}

impl Timeline {
    /// The earliest time revision `r` was known to exist.
    fn seen_by(&self, r: i64) -> Option<u64> {
        self.seen
            .iter()
            .filter(|(_, v)| *v >= r)
            .map(|(t, _)| *t)
            .min()
    }

    /// The latest time revision `r` provably did not exist yet.
    fn absent_at(&self, r: i64) -> Option<u64> {
        self.before
            .iter()
            .filter(|(_, v)| *v < r)
            .map(|(t, _)| *t)
            .max()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Leases with keys attached.
    pub with_keys: usize,
    /// Successful keep-alives.
    pub renewed: usize,
    /// Leases whose keys went by expiry (no revoke asked before).
    pub expired: usize,
    /// Leases whose keys went by the client's revoke.
    pub revoked: usize,
    /// Leases whose expiry deadline was checked.
    pub deadlines_checked: usize,
}

fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / SEC as f64)
}

/// Checks every lease; `Err` names the broken rule.
pub fn check_leases(
    truth: &Truth,
    leases: &[LeaseLog],
    tl: &Timeline,
    bound: ExpiryBound,
) -> Result<LeaseStats, String> {
    let mut stats = LeaseStats::default();
    // Each lease's keys (from the PUTs that carry it) and the revisions deleting them.
    let mut keys: BTreeMap<i64, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut key_lease: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for (_, evs) in truth.revisions() {
        for e in evs {
            let kv = e.kv.as_ref().expect("the truth has key-values");
            if e.r#type != DELETE && kv.lease != 0 {
                keys.entry(kv.lease).or_default().insert(kv.key.clone());
                key_lease.insert(kv.key.clone(), kv.lease);
            }
        }
    }
    let mut deleted: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for (r, evs) in truth.revisions() {
        for e in evs {
            let kv = e.kv.as_ref().expect("the truth has key-values");
            if e.r#type == DELETE {
                if let Some(id) = key_lease.get(&kv.key) {
                    deleted.entry(*id).or_default().insert(r);
                }
            }
        }
    }
    for l in leases {
        let id = l.id;
        let name = format!("lease {id:x} (TTL {}s)", l.ttl);
        stats.renewed += l
            .keepalives
            .iter()
            .filter(|k| k.ttl.is_some_and(|t| t > 0))
            .count();
        let Some(mine) = keys.get(&id) else {
            continue; // no key was attached (the puts failed): nothing to check
        };
        stats.with_keys += 1;
        // Revoke atomic: one revision, holding exactly the lease's keys' deletions.
        let dels = deleted.get(&id).cloned().unwrap_or_default();
        if dels.len() > 1 {
            return Err(format!(
                "[lease] {name}: its keys were deleted in several revisions {dels:?}, not in one \
                 revoke"
            ));
        }
        let del = dels.first().copied();
        if let Some(r) = del {
            let evs = truth.events_at(r);
            let gone: BTreeSet<Vec<u8>> = evs
                .iter()
                .filter(|e| e.r#type == DELETE)
                .filter_map(|e| e.kv.as_ref().map(|kv| kv.key.clone()))
                .collect();
            let alive_before: BTreeSet<Vec<u8>> = mine
                .iter()
                .filter(|k| truth.state_at(k, r - 1).is_some())
                .cloned()
                .collect();
            if gone != alive_before || evs.len() != gone.len() {
                return Err(format!(
                    "[lease] {name}: revision {r} should delete exactly its keys {:?}, it has \
                     {} events deleting {:?}",
                    alive_before
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect::<Vec<_>>(),
                    evs.len(),
                    gone.iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect::<Vec<_>>()
                ));
            }
        }
        let revoked_at = l.first_revoke();
        // A successful revoke has removed the keys by its header revision.
        for rv in &l.revokes {
            if let Some(h) = rv.revision {
                if del.is_none_or(|r| r > h) {
                    return Err(format!(
                        "[lease] {name}: revoke answered at revision {h}, but its keys were \
                         deleted at {del:?}"
                    ));
                }
            }
        }
        let seen = del.and_then(|r| tl.seen_by(r));
        // Kept alive: the deletion is not seen before a renewal's TTL ran out.
        if let (Some(r), Some(seen)) = (del, seen) {
            for k in l.keepalives.iter().filter(|k| k.ttl.is_some_and(|t| t > 0)) {
                let hold = (k.sent + l.ttl as u64 * SEC).saturating_sub(bound.tick_ns);
                if k.sent > seen {
                    return Err(format!(
                        "[lease] {name}: a keep-alive sent at {} renewed it after its keys' \
                         deletion (revision {r}) was seen at {}",
                        secs(k.sent),
                        secs(seen)
                    ));
                }
                if seen < hold.min(revoked_at) {
                    return Err(format!(
                        "[lease] {name}: its keys were deleted at revision {r}, seen at {}, but a \
                         keep-alive sent at {} renewed it (answered at {}) until at least {}",
                        secs(seen),
                        secs(k.sent),
                        secs(k.answered.unwrap_or(0)),
                        secs(hold)
                    ));
                }
            }
        }
        if del.is_some() {
            if revoked_at < u64::MAX && seen.is_none_or(|s| s >= revoked_at) {
                stats.revoked += 1;
            } else {
                stats.expired += 1;
            }
        }
        // Expires: gone within the bound after keep-alives stopped.
        let Some(stopped) = l.stopped else { continue };
        let stop = if l.clean {
            stopped
        } else {
            stopped.max(
                l.keepalives
                    .iter()
                    .filter(|k| k.answered.is_none())
                    .map(|k| k.sent + bound.unanswered_ns)
                    .max()
                    .unwrap_or(0),
            )
        };
        let (mut base, extra) = if stop >= tl.healed {
            (stop, 0)
        } else {
            (tl.healed, bound.revoke_retry_ns)
        };
        let deadline = loop {
            let d = base + l.ttl as u64 * SEC + bound.extend_ns + bound.slack_ns + extra;
            match tl
                .leader_changes
                .iter()
                .copied()
                .filter(|c| *c > base && *c <= d)
                .max()
            {
                Some(c) => base = c,
                None => break d,
            }
        };
        if revoked_at <= deadline {
            continue; // revoked by its client before the deadline: checked above
        }
        let late = match del {
            Some(r) => tl.absent_at(r).filter(|t| *t > deadline),
            None => (tl.end > deadline).then_some(tl.end),
        };
        if deadline < tl.end {
            stats.deadlines_checked += 1;
        }
        if let Some(t) = late {
            return Err(format!(
                "[lease] {name}: keep-alives stopped at {} ({}); its keys should be gone by {} \
                 (TTL + {} extension + {} slack{}, from {}), but at {} they {}",
                secs(stopped),
                if l.clean {
                    "after the last answer"
                } else {
                    "with one unanswered"
                },
                secs(deadline),
                secs(bound.extend_ns),
                secs(bound.slack_ns),
                if extra > 0 {
                    format!(" + {} revoke retry", secs(extra))
                } else {
                    String::new()
                },
                secs(base),
                secs(t),
                match del {
                    Some(r) => format!("were still there (they went at revision {r})"),
                    None => "were still there, never deleted".into(),
                }
            ));
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch_check::PUT;
    use detcd_core::proto::mvccpb::{Event, KeyValue};

    fn put(key: &str, rev: i64, lease: i64) -> Event {
        Event {
            r#type: PUT,
            kv: Some(KeyValue {
                key: key.into(),
                value: b"v".to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease,
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

    const BOUND: ExpiryBound = ExpiryBound {
        extend_ns: SEC,
        tick_ns: 100_000_000,
        slack_ns: SEC,
        revoke_retry_ns: 7 * SEC,
        unanswered_ns: 14 * SEC,
    };

    /// Lease 1 (TTL 3 s): keys a and b put at 2 and 3, kept alive at 1, 2, 3 and 4 s, stopped
    /// at 4.1 s, deleted together at revision 5, seen at 8.2 s (deadline 4.1 + 3 + 2).
    /// Lease 2: key c at 4, revoked at 9 s, deleted at 6.
    fn truth() -> Truth {
        let evs = vec![
            put("l/1/a", 2, 1),
            put("l/1/b", 3, 1),
            put("l/2/c", 4, 2),
            del("l/1/a", 5),
            del("l/1/b", 5),
            del("l/2/c", 6),
        ];
        Truth::build(&evs, 6).unwrap()
    }

    fn leases() -> Vec<LeaseLog> {
        let ka = |s: f64| KeepAlive {
            sent: (s * SEC as f64) as u64,
            answered: Some((s * SEC as f64) as u64 + 10_000_000),
            ttl: Some(3),
        };
        vec![
            LeaseLog {
                id: 1,
                ttl: 3,
                keepalives: vec![ka(1.0), ka(2.0), ka(3.0), ka(4.0)],
                stopped: Some(4_100_000_000),
                clean: true,
                revokes: vec![],
            },
            LeaseLog {
                id: 2,
                ttl: 3,
                keepalives: vec![ka(8.0)],
                stopped: Some(8_100_000_000),
                clean: true,
                revokes: vec![Revoke {
                    invoked: 9 * SEC,
                    revision: Some(6),
                }],
            },
        ]
    }

    fn timeline() -> Timeline {
        Timeline {
            seen: vec![(8_200_000_000, 5), (9_100_000_000, 6)],
            before: vec![(7_000_000_000, 4), (9_000_000_000, 5)],
            leader_changes: vec![],
            healed: 0,
            end: 20 * SEC,
        }
    }

    fn fails_with(t: &Truth, l: &[LeaseLog], tl: &Timeline, part: &str) {
        let e = check_leases(t, l, tl, BOUND).expect_err("the doctored run passed");
        assert!(e.starts_with("[lease] "), "{e}");
        assert!(e.contains(part), "expected {part:?} in: {e}");
    }

    #[test]
    fn a_correct_run_passes() {
        let s = check_leases(&truth(), &leases(), &timeline(), BOUND).unwrap();
        assert_eq!(
            (s.with_keys, s.expired, s.revoked, s.deadlines_checked),
            (2, 1, 1, 1)
        );
    }

    #[test]
    fn keys_deleted_while_kept_alive_fail() {
        // The deletion seen at 6 s, 2 s after the keep-alive at 4 s (TTL 3).
        let mut tl = timeline();
        tl.seen[0].0 = 6 * SEC;
        fails_with(
            &truth(),
            &leases(),
            &tl,
            "a keep-alive sent at 4.000s renewed it",
        );
        // Within a tick of sent + TTL is allowed (the lease clock's granularity).
        tl.seen[0].0 = 6_950_000_000;
        check_leases(&truth(), &leases(), &tl, BOUND).unwrap();
    }

    #[test]
    fn a_renewal_after_the_deletion_fails() {
        let mut l = leases();
        l[0].keepalives.push(KeepAlive {
            sent: 9 * SEC,
            answered: Some(9 * SEC + 1),
            ttl: Some(3),
        });
        fails_with(
            &truth(),
            &l,
            &timeline(),
            "renewed it after its keys' deletion",
        );
    }

    #[test]
    fn keys_outliving_the_bound_fail() {
        // Deletion at revision 5 not there yet at 9.5 s: the deadline was 9.1 s.
        let mut tl = timeline();
        tl.before.push((9_500_000_000, 4));
        fails_with(&truth(), &leases(), &tl, "should be gone by 9.100s");
        // A leader change at 6 s moves the deadline to 11 s: then it is fine.
        tl.leader_changes.push(6 * SEC);
        check_leases(&truth(), &leases(), &tl, BOUND).unwrap();
        // Keys never deleted at all.
        let t = Truth::build(&[put("l/1/a", 2, 1)], 2).unwrap();
        let mut l = leases();
        l.truncate(1);
        fails_with(&t, &l, &timeline(), "never deleted");
    }

    #[test]
    fn a_revoke_split_over_revisions_fails() {
        let evs = vec![
            put("l/1/a", 2, 1),
            put("l/1/b", 3, 1),
            del("l/1/a", 4),
            del("l/1/b", 5),
        ];
        let t = Truth::build(&evs, 5).unwrap();
        fails_with(&t, &leases()[..1], &timeline(), "several revisions");
        // A revoke's revision with another key in it.
        let evs = vec![
            put("l/1/a", 2, 1),
            put("w/x", 3, 0),
            del("l/1/a", 4),
            del("w/x", 4),
        ];
        let t = Truth::build(&evs, 4).unwrap();
        fails_with(
            &t,
            &leases()[..1],
            &timeline(),
            "should delete exactly its keys",
        );
    }

    #[test]
    fn a_revoke_answered_before_its_deletion_fails() {
        let mut l = leases();
        l[1].revokes[0].revision = Some(5);
        fails_with(&truth(), &l, &timeline(), "revoke answered at revision 5");
    }
}
