//! Concurrent clients over the real gRPC API, every operation recorded for the checker, and
//! the cluster invariants watched while they run.

use crate::checkers::Observation;
use crate::cluster::Client;
use crate::history::{History, Op, OpId, Outcome, Output};
use detcd_core::proto::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, StatusRequest, TxnRequest, TxnResponse,
};
use madsim::rand::{thread_rng, Rng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;

/// Nanoseconds of simulated time since `start`.
pub fn now_ns(start: madsim::time::Instant) -> u64 {
    madsim::time::Instant::now()
        .duration_since(start)
        .as_nanos() as u64
}

const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Header revisions of answered operations, for the `[revision order]` checker.
pub type Revisions = Arc<Mutex<Vec<Observation>>>;

/// A response with etcd's header.
pub trait WithHeader {
    fn header(&self) -> Option<&ResponseHeader>;
}

macro_rules! with_header {
    ($($t:ty),*) => {$(
        impl WithHeader for $t {
            fn header(&self) -> Option<&ResponseHeader> {
                self.header.as_ref()
            }
        }
    )*};
}
with_header!(PutResponse, RangeResponse, DeleteRangeResponse, TxnResponse);

/// What a failed call means for the history: a request error the server rejected before
/// proposing did nothing; anything else (timeout, unavailable, leader changed) may have.
fn classify(status: &tonic::Status) -> Outcome {
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::NotFound | Code::Unimplemented => {
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    }
}

async fn connect(endpoints: &[String], i: usize) -> Option<Client> {
    Client::connect(&endpoints[i % endpoints.len()]).await
}

/// One client: random operations on a small key space against one member at a time,
/// moving to another member when calls fail.
pub async fn run_client(
    id: u32,
    endpoints: Vec<String>,
    keys: usize,
    history: History,
    revisions: Revisions,
    start: madsim::time::Instant,
    stop: Arc<AtomicBool>,
) {
    let mut endpoint = id as usize;
    let mut client: Option<Client> = None;
    let mut seq = 0u64;
    // The last (value, mod_revision) this client read per key, for CAS on mod_revision.
    // Every written value is unique, so "mod_revision == r" holds exactly when the key holds
    // the value read together with r: the register model checks it as a CAS on that value.
    let mut seen: std::collections::HashMap<String, (Option<String>, i64)> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        let c = match &mut client {
            Some(c) => c,
            None => {
                client = connect(&endpoints, endpoint).await;
                if client.is_none() {
                    endpoint += 1;
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let key = format!("k{}", thread_rng().gen_range(0..keys));
        seq += 1;
        let value = format!("c{id}-{seq}");
        let choice = thread_rng().gen_range(0..100);
        let failed = if choice < 35 {
            let op = history.invoke(
                id,
                key.clone(),
                Op::Put {
                    value: value.clone(),
                },
                now_ns(start),
            );
            let req = PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                ..Default::default()
            };
            let res = madsim::time::timeout(OP_TIMEOUT, c.kv.put(req)).await;
            finish(&history, &revisions, op, start, res, |_| Output::Put)
        } else if choice < 70 {
            let op = history.invoke(id, key.clone(), Op::Get, now_ns(start));
            let req = RangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            };
            let res = madsim::time::timeout(OP_TIMEOUT, c.kv.range(req)).await;
            if let Ok(Ok(r)) = &res {
                let kv = r.get_ref().kvs.first();
                seen.insert(
                    key.clone(),
                    (
                        kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                        kv.map(|kv| kv.mod_revision).unwrap_or(0),
                    ),
                );
            }
            finish(&history, &revisions, op, start, res, |r| {
                Output::Get(
                    r.kvs
                        .first()
                        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                )
            })
        } else if choice < 80 {
            let op = history.invoke(id, key.clone(), Op::Delete, now_ns(start));
            let req = DeleteRangeRequest {
                key: key.into_bytes(),
                ..Default::default()
            };
            let res = madsim::time::timeout(OP_TIMEOUT, c.kv.delete_range(req)).await;
            finish(&history, &revisions, op, start, res, |r| Output::Delete {
                deleted: r.deleted > 0,
            })
        } else {
            // Compare-and-set through a Txn: on mod_revision (what a read returned), on the
            // value, or on absence (create_revision == 0).
            let by_revision = seen
                .get(&key)
                .cloned()
                .filter(|_| thread_rng().gen_bool(0.5));
            let expect = if let Some((v, _)) = &by_revision {
                v.clone()
            } else if thread_rng().gen_bool(0.3) {
                None
            } else {
                Some(format!(
                    "c{}-{}",
                    thread_rng().gen_range(0..4),
                    thread_rng().gen_range(1..seq.max(2))
                ))
            };
            let cmp = match (&by_revision, &expect) {
                (Some((_, rev)), _) => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: key.clone().into_bytes(),
                    target_union: Some(compare::TargetUnion::ModRevision(*rev)),
                    range_end: vec![],
                },
                (None, None) => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Create as i32,
                    key: key.clone().into_bytes(),
                    target_union: Some(compare::TargetUnion::CreateRevision(0)),
                    range_end: vec![],
                },
                (None, Some(v)) => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: key.clone().into_bytes(),
                    target_union: Some(compare::TargetUnion::Value(v.clone().into_bytes())),
                    range_end: vec![],
                },
            };
            let op = history.invoke(
                id,
                key.clone(),
                Op::Cas {
                    expect,
                    value: value.clone(),
                },
                now_ns(start),
            );
            let req = TxnRequest {
                compare: vec![cmp],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.into_bytes(),
                        value: value.into_bytes(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            let res = madsim::time::timeout(OP_TIMEOUT, c.kv.txn(req)).await;
            finish(&history, &revisions, op, start, res, |r| Output::Cas {
                succeeded: r.succeeded,
            })
        };
        if failed {
            client = None;
            endpoint += 1;
        }
    }
}

/// Records a call's outcome; returns true when the client should try another member.
fn finish<T: WithHeader>(
    history: &History,
    revisions: &Revisions,
    op: OpId,
    start: madsim::time::Instant,
    res: Result<Result<tonic::Response<T>, tonic::Status>, madsim::time::error::Elapsed>,
    output: impl FnOnce(&T) -> Output,
) -> bool {
    let at = now_ns(start);
    match res {
        Ok(Ok(r)) => {
            if let Some(h) = r.get_ref().header() {
                revisions.lock().unwrap().push(Observation::Revision {
                    op,
                    member: h.member_id,
                    revision: h.revision,
                });
            }
            history.complete(op, Outcome::Ok(output(r.get_ref())), at);
            false
        }
        Ok(Err(status)) => {
            history.complete(op, classify(&status), at);
            true
        }
        Err(_) => {
            history.complete(op, Outcome::Unknown, at);
            true
        }
    }
}

/// Invariants watched while the cluster runs, from every member's own Status answers.
#[derive(Default, Debug)]
pub struct Invariants {
    /// term -> leader reported by some member for that term.
    leaders: BTreeMap<u64, u64>,
    cluster_ids: BTreeMap<u64, u64>,
    /// member -> highest revision reported in its current incarnation.
    revisions: BTreeMap<u64, i64>,
    /// member -> highest raft term it reported, across restarts: raft's current term is
    /// persistent state, so a restart never lowers it (a wiped member starts over).
    terms: BTreeMap<u64, u64>,
    /// Restarts so far: an answer to a request sent before a restart may come from the
    /// incarnation that restart ended (its reply was already on the wire), so it is dropped.
    restarts: u64,
    pub violations: Vec<String>,
    pub samples: u64,
}

impl Invariants {
    /// Restarts so far; pass it back to `observe` with the answer to a request sent now.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    pub fn observe(
        &mut self,
        asked_at_restarts: u64,
        member: u64,
        cluster_id: u64,
        term: u64,
        leader: u64,
        revision: i64,
    ) {
        if asked_at_restarts != self.restarts {
            return;
        }
        self.samples += 1;
        if leader != 0 {
            match self.leaders.insert(term, leader) {
                Some(prev) if prev != leader => self.violations.push(format!(
                    "two leaders in term {term}: {prev:x} and {leader:x} (reported by {member:x})"
                )),
                _ => {}
            }
        }
        if let Some(prev) = self.cluster_ids.insert(member, cluster_id) {
            if prev != cluster_id {
                self.violations.push(format!(
                    "member {member:x} changed cluster ID {prev:x} -> {cluster_id:x}"
                ));
            }
        }
        let first = *self.cluster_ids.values().next().unwrap();
        if cluster_id != first {
            self.violations.push(format!(
                "member {member:x} reports cluster {cluster_id:x}, another {first:x}"
            ));
        }
        // Term 0 is a member that has not loaded its hard state yet.
        if term != 0 {
            let highest = self.terms.entry(member).or_insert(term);
            if term < *highest {
                self.violations.push(format!(
                    "member {member:x} went back from term {} to {term}: a restart lost its persisted term",
                    *highest
                ));
            }
            *highest = (*highest).max(term);
        }
        let max = self.revisions.entry(member).or_insert(revision);
        if revision < *max {
            self.violations.push(format!(
                "member {member:x} went back from revision {} to {revision} without restarting",
                *max
            ));
        }
        *max = (*max).max(revision);
    }

    /// A restarted member replays its log from what its disk kept: its revision may start lower.
    pub fn restarted(&mut self, member: u64) {
        self.restarts += 1;
        self.revisions.remove(&member);
    }

    /// A member whose disk was wiped keeps nothing, its term included.
    pub fn wiped(&mut self, member: u64) {
        self.restarted(member);
        self.terms.remove(&member);
    }
}

/// Polls every member's Status every 50 ms of simulated time until `stop`, over a member
/// list that may change while it runs (reconfiguration): each round polls the endpoints
/// listed at its start.
pub async fn watch_members(
    endpoints: Arc<Mutex<Vec<String>>>,
    inv: Arc<Mutex<Invariants>>,
    stop: Arc<AtomicBool>,
) {
    let mut clients: BTreeMap<String, Option<Client>> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let urls = endpoints.lock().unwrap().clone();
        clients.retain(|url, _| urls.contains(url));
        for url in &urls {
            let slot = clients.entry(url.clone()).or_insert(None);
            if slot.is_none() {
                *slot = madsim::time::timeout(Duration::from_millis(300), Client::connect(url))
                    .await
                    .ok()
                    .flatten();
            }
            let Some(c) = slot else { continue };
            let asked_at_restarts = inv.lock().unwrap().restarts();
            match madsim::time::timeout(
                Duration::from_millis(300),
                c.maintenance.status(StatusRequest {}),
            )
            .await
            {
                Ok(Ok(r)) => {
                    let s = r.into_inner();
                    let h = s.header.unwrap_or_default();
                    inv.lock().unwrap().observe(
                        asked_at_restarts,
                        h.member_id,
                        h.cluster_id,
                        s.raft_term,
                        s.leader,
                        h.revision,
                    );
                }
                _ => *slot = None,
            }
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
}
