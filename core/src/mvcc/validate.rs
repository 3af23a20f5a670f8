//! The pure request checks etcd's gRPC layer makes before a request reaches raft
//! (`v3rpc/key.go`: checkRangeRequest, checkPutRequest, checkDeleteRequest, checkTxnRequest,
//! checkIntervals). They need no state, so the server runs them before proposing; the state
//! machine runs them again when applying (except the configurable op limit), so an entry that
//! skipped them is still refused the same way on every member.

use std::collections::HashSet;

use crate::proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use super::MvccError;

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

pub(crate) fn check_range(r: &RangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    // etcd 3.4 has no such check and panics on an unknown sort target; 3.5 added this one.
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(MvccError::InvalidSortOption);
    }
    Ok(())
}

pub(crate) fn check_put(r: &PutRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

pub(crate) fn check_delete(r: &DeleteRangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// checkTxnRequest: the op-count limit (nested txns get what the parent leaves), empty keys,
/// and each op's own check. An op with no request set is refused as "key not found", as etcd does.
pub(crate) fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), MvccError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(MvccError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(q)) => check_range(q)?,
            Some(Request::RequestPut(q)) => check_put(q)?,
            Some(Request::RequestDeleteRange(q)) => check_delete(q)?,
            Some(Request::RequestTxn(q)) => check_txn(q, max_txn_ops - opc)?,
            None => return Err(MvccError::KeyNotFound),
        }
    }
    Ok(())
}

/// An interval of keys as etcd's `adt.StringAffineInterval`: `[begin, end)` where an empty
/// string compares greater than every other string.
#[derive(Clone, Debug)]
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

fn affine_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        (false, false) => a.cmp(b),
    }
}

impl Interval {
    fn point(k: &[u8]) -> Self {
        let mut end = k.to_vec();
        end.push(0);
        Interval {
            begin: k.to_vec(),
            end,
        }
    }

    /// etcd's `Interval.Compare == 0` (overlap), including its behaviour on inverted intervals:
    /// a delete whose range_end is "\0" (all keys >= key) is the interval [key, "\0"), which
    /// overlaps nothing, so etcd does not see it conflict with puts. We keep that.
    fn overlaps(&self, other: &Interval) -> bool {
        use std::cmp::Ordering::*;
        let b_b = affine_cmp(&self.begin, &other.begin);
        let b_e = affine_cmp(&self.begin, &other.end);
        let e_b = affine_cmp(&self.end, &other.begin);
        let left = b_b == Less && e_b != Greater;
        let right = b_e != Less;
        !left && !right
    }
}

#[derive(Default)]
struct Dels(Vec<Interval>);

impl Dels {
    fn intersects_point(&self, k: &[u8]) -> bool {
        let p = Interval::point(k);
        self.0.iter().any(|iv| p.overlaps(iv))
    }
}

/// checkIntervals: no key may be put twice, nor put and deleted, in one txn branch. Puts in the
/// then/else branches of one nested txn may repeat each other (only one branch runs). Deletes may
/// overlap each other.
fn check_intervals(reqs: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Dels), MvccError> {
    let mut dels = Dels::default();
    for op in reqs {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            dels.0.push(if d.range_end.is_empty() {
                Interval::point(&d.key)
            } else {
                Interval {
                    begin: d.key.clone(),
                    end: d.range_end.clone(),
                }
            });
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in reqs {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.intersects_point(k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(MvccError::DuplicateKey);
            }
            if dels.intersects_point(k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        // etcd unions the children's deletes that overlap ["\0", +inf): every interval but the
        // inverted ones, which overlap nothing anyway.
        let all = Interval {
            begin: vec![0],
            end: Vec::new(),
        };
        dels.0.extend(
            dels_then
                .0
                .into_iter()
                .chain(dels_else.0)
                .filter(|iv| all.overlaps(iv)),
        );
    }
    for op in reqs {
        if let Some(Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || dels.intersects_point(&p.key) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

pub(crate) fn check_txn_full(r: &TxnRequest, max_txn_ops: usize) -> Result<(), MvccError> {
    check_txn(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}
