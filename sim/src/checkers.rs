//! Checkers over a finished simulation run, one function each, each returning `Err` with the
//! checker's name in brackets and the evidence. Used by the core-only simulator
//! (`crate::core_sim`) and the madsim suite (`crate::scenario`).
//!
//! - `[linearizability]`: every key's history is linearizable; a search that runs out of
//!   budget is a failure too (it proves nothing).
//! - `[one leader per term]`: no two members lead in the same term.
//! - `[revision order]`: an operation that starts after another finished never answers with
//!   a lower header revision (etcd's revisions are a real-time order).
//! - `[convergence]`: after healing, every member holds the same key-value content at the
//!   same revision.
//! - `[configuration]`: after runtime reconfiguration, every member lists the same members
//!   (IDs, names, peer URLs, learner flags), the ones the harness added and did not remove.

use crate::history::{HistorySnapshot, OpId, Outcome};
use crate::linearizability::{self, Budget, CheckResult};
use detcd_core::proto::etcdserverpb as pb;
use detcd_core::state::{KvState, StateViews};
use redb::ReadableDatabase;
use std::collections::BTreeMap;

/// Something the harness saw during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// `member` was leader in `term`.
    Leader { term: u64, member: u64 },
    /// Operation `op` was answered by `member` with this header revision.
    Revision {
        op: OpId,
        member: u64,
        revision: i64,
    },
}

pub fn linearizable(history: &HistorySnapshot) -> Result<(), String> {
    match linearizability::check(history, Budget::default()) {
        CheckResult::Ok => Ok(()),
        other => Err(format!("[linearizability] {other}")),
    }
}

pub fn one_leader_per_term(observations: &[Observation]) -> Result<(), String> {
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    for o in observations {
        if let Observation::Leader { term, member } = o {
            let first = *leaders.entry(*term).or_insert(*member);
            if first != *member {
                return Err(format!(
                    "[one leader per term] members {first:x} and {member:x} both led term {term}"
                ));
            }
        }
    }
    Ok(())
}

/// For every answered operation B: max revision of operations answered before B was invoked
/// must be at most B's revision.
pub fn revisions_never_go_back(
    history: &HistorySnapshot,
    observations: &[Observation],
) -> Result<(), String> {
    let revs: BTreeMap<OpId, i64> = observations
        .iter()
        .filter_map(|o| match o {
            Observation::Revision { op, revision, .. } => Some((*op, *revision)),
            _ => None,
        })
        .collect();
    // (completion time, revision, op) of answered operations, by completion time.
    let mut done: Vec<(u64, i64, OpId)> = history
        .entries()
        .iter()
        .filter(|e| matches!(e.outcome, Some(Outcome::Ok(_))))
        .filter_map(|e| Some((e.ret?, *revs.get(&e.id)?, e.id)))
        .collect();
    done.sort();
    // Running maximum, so "the highest revision answered before time t" is a binary search.
    let mut best: Vec<(i64, OpId)> = Vec::with_capacity(done.len());
    for (_, rev, op) in &done {
        let prev = best.last().copied().unwrap_or((i64::MIN, *op));
        best.push(if *rev > prev.0 { (*rev, *op) } else { prev });
    }
    for e in history.entries() {
        let Some(rev) = revs.get(&e.id) else { continue };
        let before = done.partition_point(|(t, _, _)| *t < e.invoke);
        if before == 0 {
            continue;
        }
        let (max_rev, by) = best[before - 1];
        if *rev < max_rev {
            return Err(format!(
                "[revision order] {} on {:?} answered revision {rev}, but {:?} had already \
                 answered revision {max_rev} before it started",
                e.op, e.key, by
            ));
        }
    }
    Ok(())
}

/// `states` are (member, revision, content hash) after healing; all `members` must be there.
pub fn replicas_converge(states: &[(u64, i64, u64)], members: usize) -> Result<(), String> {
    if states.len() != members {
        return Err(format!(
            "[convergence] only {} of {members} members were running at the end",
            states.len()
        ));
    }
    let first = states[0];
    for s in &states[1..] {
        if (s.1, s.2) != (first.1, first.2) {
            return Err(format!(
                "[convergence] member {:x} is at revision {} hash {:x}, member {:x} at revision {} hash {:x}",
                first.0, first.1, first.2, s.0, s.1, s.2
            ));
        }
    }
    Ok(())
}

fn range(state: &KvState<impl StateViews>, req: &pb::RangeRequest) -> pb::RangeResponse {
    let txn = state.db().begin_read().expect("a read transaction");
    state
        .views()
        .mvcc(|m| m.range_in(&txn, req))
        .expect("a range over a healthy store")
}

/// The value of `key` and the store revision, read from local state.
pub fn read_key(state: &KvState<impl StateViews>, key: &str) -> (Option<String>, i64) {
    let resp = range(
        state,
        &pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        },
    );
    let value = resp
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    (value, resp.header.map(|h| h.revision).unwrap_or(0))
}

/// The store revision and a hash of every live key ([`hash_kvs`]), read from local state.
pub fn kv_hash(state: &KvState<impl StateViews>) -> (i64, u64) {
    let resp = range(
        state,
        &pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        },
    );
    (
        resp.header.map(|h| h.revision).unwrap_or(0),
        hash_kvs(&resp.kvs),
    )
}

/// A hash (FNV-1a) of key-value pairs with their values and revisions (a range of every key).
pub fn hash_kvs(kvs: &[detcd_core::proto::mvccpb::KeyValue]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for kv in kvs {
        feed(&kv.key);
        feed(&kv.value);
        feed(&kv.create_revision.to_le_bytes());
        feed(&kv.mod_revision.to_le_bytes());
        feed(&kv.version.to_le_bytes());
    }
    h
}

/// One member as a member list names it: ID, name, peer URLs (sorted), learner or voter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

impl ListedMember {
    pub fn from_pb(m: &pb::Member) -> ListedMember {
        let mut peer_urls = m.peer_ur_ls.clone();
        peer_urls.sort();
        ListedMember {
            id: m.id,
            name: m.name.clone(),
            peer_urls,
            learner: m.is_learner,
        }
    }
}

impl std::fmt::Display for ListedMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:x} {:?} {}{}",
            self.id,
            self.name,
            self.peer_urls.join(","),
            if self.learner { " (learner)" } else { "" }
        )
    }
}

fn describe(members: &[ListedMember]) -> String {
    let mut sorted = members.to_vec();
    sorted.sort();
    let rows: Vec<String> = sorted.iter().map(|m| m.to_string()).collect();
    format!("[{}]", rows.join("; "))
}

/// `[configuration]`: every member's own member list (`lists`: the member asked, what it
/// listed; `None` when it did not answer) names exactly the `expected` members: same IDs,
/// names, peer URLs and learner flags. Order does not matter.
pub fn configurations_agree(
    expected: &[ListedMember],
    lists: &[(String, Option<Vec<ListedMember>>)],
) -> Result<(), String> {
    let mut want = expected.to_vec();
    want.sort();
    for (member, list) in lists {
        let Some(list) = list else {
            return Err(format!(
                "[configuration] {member} did not answer its member list; expected {}",
                describe(expected)
            ));
        };
        let mut got = list.clone();
        got.sort();
        if got != want {
            return Err(format!(
                "[configuration] {member} lists {}, expected {}",
                describe(&got),
                describe(&want)
            ));
        }
    }
    Ok(())
}
