//! Property test: random sequences of put / delete / txn / compact / range / reopen, run against
//! the real store and against a deliberately naive model that keeps a full copy of the key
//! space at every revision. Responses (or error messages) must be identical, and after every
//! step the in-memory state must equal a fresh `open` of the database.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

type State = BTreeMap<Vec<u8>, KeyValue>;

struct Model {
    /// `states[r]` is the key space at revision r (r = 0 and 1 are empty).
    states: Vec<State>,
    compacted: i64,
}

fn in_range(key: &[u8], end: &[u8], k: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        _ => k >= key && k < end,
    }
}

fn select(s: &State, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
    s.values()
        .filter(|kv| in_range(key, end, &kv.key))
        .cloned()
        .collect()
}

fn hdr(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

/// The mutable side of a write in the model.
struct Work {
    begin: i64,
    state: State,
    changed: bool,
}

impl Model {
    fn new() -> Model {
        Model {
            states: vec![State::new(), State::new()],
            compacted: -1,
        }
    }

    fn cur(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn range(
        &self,
        req: &RangeRequest,
        view: &State,
        view_rev: i64,
    ) -> Result<RangeResponse, MvccError> {
        if req.revision > view_rev {
            return Err(MvccError::FutureRev);
        }
        let r = if req.revision <= 0 {
            view_rev
        } else {
            req.revision
        };
        if r < self.compacted {
            return Err(MvccError::Compacted);
        }
        let state = if r == view_rev {
            view
        } else {
            &self.states[r as usize]
        };
        let all = select(state, &req.key, &req.range_end);
        let count = all.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                header: hdr(view_rev),
                kvs: vec![],
                more: false,
                count,
            });
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let mut kvs = all;
        // etcd's quirk: without a sort order (and without filters), only limit+1 keys are
        // fetched (in key order) before the sort by a non-key target.
        if req.sort_order == 0 && !filtered && req.limit > 0 {
            kvs.truncate(req.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        let order = if req.sort_order == 0 && req.sort_target != 0 {
            1
        } else {
            req.sort_order
        };
        if order != 0 {
            let key = |kv: &KeyValue| -> (Vec<u8>, i64) {
                match req.sort_target {
                    0 => (kv.key.clone(), 0),
                    1 => (vec![], kv.version),
                    2 => (vec![], kv.create_revision),
                    3 => (vec![], kv.mod_revision),
                    _ => (kv.value.clone(), 0),
                }
            };
            kvs.sort_by_key(key);
            if order == 2 {
                // Descending, ties in key order: reverse, then restore key order inside ties.
                kvs.reverse();
                let mut i = 0;
                while i < kvs.len() {
                    let mut j = i;
                    while j < kvs.len() && key(&kvs[j]) == key(&kvs[i]) {
                        j += 1;
                    }
                    kvs[i..j].reverse();
                    i = j;
                }
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResponse {
            header: hdr(view_rev),
            kvs,
            more,
            count,
        })
    }

    fn put(&self, w: &mut Work, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let main = w.begin + 1;
        let prev = w.state.get(&req.key).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let kv = KeyValue {
            key: req.key.clone(),
            value: if req.ignore_value {
                prev.as_ref().unwrap().value.clone()
            } else {
                req.value.clone()
            },
            lease: if req.ignore_lease {
                prev.as_ref().unwrap().lease
            } else {
                req.lease
            },
            create_revision: prev.as_ref().map_or(main, |p| p.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
        };
        w.state.insert(req.key.clone(), kv);
        w.changed = true;
        Ok(PutResponse {
            header: hdr(main),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn delete(&self, w: &mut Work, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let gone = select(&w.state, &req.key, &req.range_end);
        for kv in &gone {
            w.state.remove(&kv.key);
        }
        if !gone.is_empty() {
            w.changed = true;
        }
        let rev = if w.changed { w.begin + 1 } else { w.begin };
        DeleteRangeResponse {
            header: hdr(rev),
            deleted: gone.len() as i64,
            prev_kvs: if req.prev_kv { gone } else { vec![] },
        }
    }

    fn compare(&self, s: &State, c: &Compare) -> bool {
        let kvs = select(s, &c.key, &c.range_end);
        if kvs.is_empty() && c.target == CompareTarget::Value as i32 {
            return false;
        }
        let kvs = if kvs.is_empty() {
            vec![KeyValue::default()]
        } else {
            kvs
        };
        kvs.iter().all(|kv| {
            let u = c.target_union.clone();
            let ord = match (c.target, u) {
                (3, Some(TargetUnion::Value(v))) => kv.value.cmp(&v),
                (3, _) => kv.value.as_slice().cmp(&[][..]),
                (0, Some(TargetUnion::Version(v))) => kv.version.cmp(&v),
                (1, Some(TargetUnion::CreateRevision(v))) => kv.create_revision.cmp(&v),
                (2, Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(&v),
                (4, Some(TargetUnion::Lease(v))) => kv.lease.cmp(&v),
                (0, _) => kv.version.cmp(&0),
                (1, _) => kv.create_revision.cmp(&0),
                (2, _) => kv.mod_revision.cmp(&0),
                (_, _) => kv.lease.cmp(&0),
            };
            match c.result {
                0 => ord.is_eq(),
                1 => ord.is_gt(),
                2 => ord.is_lt(),
                _ => ord.is_ne(),
            }
        })
    }

    /// Checks of the taken path, against the state before the txn.
    fn check(&self, pre: &State, req: &TxnRequest) -> Result<(), MvccError> {
        // ignore_value puts first (whole tree), then range revisions (whole tree), as etcd.
        fn walk<'a>(m: &Model, pre: &State, req: &'a TxnRequest, out: &mut Vec<&'a RequestOp>) {
            let ok = req.compare.iter().all(|c| m.compare(pre, c));
            for op in if ok { &req.success } else { &req.failure } {
                if let Some(Request::RequestTxn(t)) = &op.request {
                    walk(m, pre, t, out);
                } else {
                    out.push(op);
                }
            }
        }
        let mut ops = Vec::new();
        walk(self, pre, req, &mut ops);
        for op in &ops {
            if let Some(Request::RequestPut(p)) = &op.request {
                if (p.ignore_value || p.ignore_lease) && !pre.contains_key(&p.key) {
                    return Err(MvccError::KeyNotFound);
                }
            }
        }
        for op in &ops {
            if let Some(Request::RequestRange(r)) = &op.request {
                if r.revision != 0 {
                    if r.revision > self.cur() {
                        return Err(MvccError::FutureRev);
                    }
                    if r.revision < self.compacted {
                        return Err(MvccError::Compacted);
                    }
                }
            }
        }
        Ok(())
    }

    fn exec_txn(
        &self,
        pre: &State,
        w: &mut Work,
        req: &TxnRequest,
    ) -> Result<TxnResponse, MvccError> {
        let ok = req.compare.iter().all(|c| self.compare(pre, c));
        let mut responses = vec![];
        for op in if ok { &req.success } else { &req.failure } {
            let r = match op.request.as_ref().unwrap() {
                Request::RequestRange(r) => {
                    let view_rev = w.begin + i64::from(w.changed);
                    Response::ResponseRange(self.range(r, &w.state, view_rev)?)
                }
                Request::RequestPut(p) => Response::ResponsePut(self.put(w, p)?),
                Request::RequestDeleteRange(d) => Response::ResponseDeleteRange(self.delete(w, d)),
                Request::RequestTxn(t) => Response::ResponseTxn(self.exec_txn(pre, w, t)?),
            };
            responses.push(ResponseOp { response: Some(r) });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: ok,
            responses,
        })
    }

    fn work(&self) -> Work {
        Work {
            begin: self.cur(),
            state: self.states.last().unwrap().clone(),
            changed: false,
        }
    }

    fn commit(&mut self, w: Work) {
        if w.changed {
            self.states.push(w.state);
        }
    }

    fn apply(&mut self, op: &Op) -> Result<String, MvccError> {
        match op {
            Op::Put(p) => {
                let mut w = self.work();
                let r = self.put(&mut w, p)?;
                self.commit(w);
                Ok(format!("{r:?}"))
            }
            Op::Del(d) => {
                let mut w = self.work();
                let r = self.delete(&mut w, d);
                self.commit(w);
                Ok(format!("{r:?}"))
            }
            Op::Txn(t) => {
                let pre = self.states.last().unwrap().clone();
                self.check(&pre, t)?;
                let mut w = self.work();
                let mut r = self.exec_txn(&pre, &mut w, t)?;
                r.header = hdr(w.begin + i64::from(w.changed));
                self.commit(w);
                Ok(format!("{r:?}"))
            }
            Op::Range(r) => {
                let cur = self.cur();
                Ok(format!(
                    "{:?}",
                    self.range(r, &self.states[cur as usize], cur)?
                ))
            }
            Op::Compact(rev) => {
                if *rev <= self.compacted {
                    return Err(MvccError::Compacted);
                }
                if *rev > self.cur() {
                    return Err(MvccError::FutureRev);
                }
                self.compacted = *rev;
                Ok(format!(
                    "{:?}",
                    CompactionResponse {
                        header: hdr(self.cur())
                    }
                ))
            }
            Op::Reopen => Ok(String::new()),
        }
    }
}

/// Folds generated revisions into the store's current range (plus one past it), so that
/// compactions and historical reads land on interesting revisions rather than the future.
fn fit(op: Op, cur: i64) -> Op {
    match op {
        Op::Compact(rev) => Op::Compact(rev % (cur + 2)),
        Op::Range(r) if r.revision > 0 => Op::Range(RangeRequest {
            revision: r.revision % (cur + 2),
            ..r
        }),
        op => op,
    }
}

fn run_real(h: &mut H, op: &Op) -> Result<String, MvccError> {
    match op {
        Op::Put(p) => h.put(p.clone()).map(|r| format!("{r:?}")),
        Op::Del(d) => h.del(d.clone()).map(|r| format!("{r:?}")),
        Op::Txn(t) => h.txn(t.clone()).map(|r| format!("{r:?}")),
        Op::Range(r) => h.range(r.clone()).map(|r| format!("{r:?}")),
        Op::Compact(rev) => h.compact(*rev).map(|r| format!("{r:?}")),
        Op::Reopen => {
            h.flush();
            h.m = h.reopen();
            Ok(String::new())
        }
    }
}

/// A loose superset of etcd's duplicate-key rule: some put's key is put again or falls in a
/// delete range anywhere in the txn (either branch, any depth).
fn has_conflict(t: &TxnRequest) -> bool {
    fn collect(t: &TxnRequest, puts: &mut Vec<Vec<u8>>, dels: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Request::RequestPut(p)) => puts.push(p.key.clone()),
                Some(Request::RequestDeleteRange(d)) => {
                    dels.push((d.key.clone(), d.range_end.clone()))
                }
                Some(Request::RequestTxn(n)) => collect(n, puts, dels),
                _ => {}
            }
        }
    }
    let (mut puts, mut dels) = (vec![], vec![]);
    collect(t, &mut puts, &mut dels);
    let mut sorted = puts.clone();
    sorted.sort();
    sorted.dedup();
    sorted.len() != puts.len()
        || puts
            .iter()
            .any(|k| dels.iter().any(|(s, e)| in_range(s, e, k)))
}

#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Del(DeleteRangeRequest),
    Txn(TxnRequest),
    Range(RangeRequest),
    Compact(i64),
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["a", "ab", "b", "c", "d"]).prop_map(b)
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![4 => Just(vec![]), 1 => Just(vec![0]), 2 => key()]
}

fn small_rev() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 1 => -1i64..25]
}

fn put_req() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        prop::sample::select(vec!["", "x", "y", "z"]),
        any::<bool>(),
        0u8..8,
        prop::sample::select(vec![0i64, 5]),
    )
        .prop_map(|(key, v, prev_kv, flags, lease)| {
            let ignore_value = flags == 0;
            let ignore_lease = flags == 1;
            PutRequest {
                key,
                value: if ignore_value { vec![] } else { b(v) },
                lease: if ignore_lease { 0 } else { lease },
                prev_kv,
                ignore_value,
                ignore_lease,
            }
        })
}

fn del_req() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    (
        (
            key(),
            range_end(),
            prop_oneof![3 => Just(0i64), 1 => -1i64..4],
            small_rev(),
        ),
        (
            0i32..3,
            prop_oneof![2 => Just(0i32), 1 => 0i32..5],
            any::<bool>(),
            prop::bool::weighted(0.15),
        ),
        prop::collection::vec(prop_oneof![4 => Just(0i64), 1 => 1i64..20], 4),
    )
        .prop_map(
            |(
                (key, range_end, limit, revision),
                (sort_order, sort_target, keys_only, count_only),
                f,
            )| RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order,
                sort_target,
                serializable: false,
                keys_only,
                count_only,
                min_mod_revision: f[0],
                max_mod_revision: f[1],
                min_create_revision: f[2],
                max_create_revision: f[3],
            },
        )
}

fn compare_req() -> impl Strategy<Value = Compare> {
    (
        key(),
        prop_oneof![5 => Just(vec![]), 1 => range_end()],
        0i32..5,
        0i32..4,
        0i64..12,
        prop::sample::select(vec!["", "x", "y", "z"]),
    )
        .prop_map(|(key, range_end, target, result, n, v)| {
            let target_union = Some(match target {
                0 => TargetUnion::Version(n % 4),
                1 => TargetUnion::CreateRevision(n),
                2 => TargetUnion::ModRevision(n),
                3 => TargetUnion::Value(b(v)),
                _ => TargetUnion::Lease(if n % 2 == 0 { 0 } else { 5 }),
            });
            Compare {
                key,
                range_end,
                target,
                result,
                target_union,
            }
        })
}

fn flat_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        3 => put_req().prop_map(Request::RequestPut),
        2 => del_req().prop_map(Request::RequestDeleteRange),
        2 => range_req().prop_map(Request::RequestRange),
    ]
    .prop_map(|r| RequestOp { request: Some(r) })
}

fn txn_req() -> impl Strategy<Value = TxnRequest> {
    let leaf = (
        prop::collection::vec(compare_req(), 0..3),
        prop::collection::vec(flat_op(), 0..4),
        prop::collection::vec(flat_op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    leaf.prop_recursive(2, 12, 4, |inner| {
        let op = prop_oneof![3 => flat_op(), 1 => inner.prop_map(|t| RequestOp { request: Some(Request::RequestTxn(t)) })];
        (prop::collection::vec(compare_req(), 0..3), prop::collection::vec(op.clone(), 0..4), prop::collection::vec(op, 0..3))
            .prop_map(|(compare, success, failure)| TxnRequest { compare, success, failure })
    })
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => put_req().prop_map(Op::Put),
        2 => del_req().prop_map(Op::Del),
        4 => txn_req().prop_map(Op::Txn),
        4 => range_req().prop_map(Op::Range),
        1 => (0i64..40).prop_map(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_naive_model(ops in prop::collection::vec(any_op(), 1..60)) {
        run_against_model(H::new(), &ops, &[])?;
    }

    /// As the server runs it: many writes in one open transaction, committed now and then,
    /// while reads come from read transactions that see only what is committed.
    #[test]
    fn batched_commits_match_the_naive_model(
        ops in prop::collection::vec(any_op(), 1..60),
        commits in prop::collection::vec(any::<bool>(), 60),
    ) {
        run_against_model(H::batched(), &ops, &commits)?;
    }
}

/// Runs `ops` on the store and on the model, comparing every answer; after step `i`, commits
/// the open transaction if `commits[i]` (batched mode).
fn run_against_model(mut h: H, ops: &[Op], commits: &[bool]) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    {
        for (i, op) in ops.iter().enumerate() {
            let op = &fit(op.clone(), model.cur());
            let real = run_real(&mut h, op);
            if let (Op::Txn(t), Err(MvccError::DuplicateKey)) = (op, &real) {
                prop_assert!(
                    has_conflict(t),
                    "step {}: txn refused as duplicate without a conflict: {:?}",
                    i,
                    t
                );
                continue;
            }
            let want = model.apply(op);
            let show = |r: &Result<String, MvccError>| match r {
                Ok(s) => s.clone(),
                Err(e) => format!("error: {e}"),
            };
            prop_assert_eq!(show(&real), show(&want), "step {}: {:?}", i, op);
            prop_assert_eq!(h.m.current_revision(), model.cur());
            if commits.get(i).copied().unwrap_or(false) {
                h.flush();
            }
            h.check_invariants();
        }
    }
    h.flush();
    h.check_invariants();
    Ok(())
}
