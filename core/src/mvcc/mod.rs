//! The MVCC key-value state machine, with etcd 3.4's semantics.
//!
//! # Model
//! A revision is `(main, sub)`. Every write request that changes something (a Put, a
//! DeleteRange that deletes at least one key, a Txn whose taken branch writes) gets the next
//! `main`; `sub` counts the changes inside it. An empty store is at revision 1, as etcd's is,
//! so the first write is revision 2.
//!
//! # Storage
//! `tables::KV` holds one row per change: the key is the revision (`main` then `sub`, each a
//! big-endian u64, 16 bytes) followed by `b't'` for a deletion; the value is the encoded
//! `mvccpb::KeyValue` (for a deletion, only the key is set). `tables::META` holds the compacted
//! revision under [`meta_keys::MVCC_COMPACT_REVISION`](crate::tables::meta_keys::MVCC_COMPACT_REVISION)
//! (8 bytes big-endian; absent means never compacted). The current revision is not stored: it
//! is the largest `main` in the table, or the compacted revision if that is larger (compaction
//! can remove every row), or 1.
//!
//! In memory, an index maps each user key to its list of changes, rebuilt by [`Mvcc::open`].
//!
//! # Transactions and failure
//! Write methods take the caller's `redb::WriteTransaction` and open `KV`/`META` themselves (so
//! the caller must not hold those tables open during the call). The caller commits, together
//! with the raft applied index. Several requests may be applied in one redb transaction.
//!
//! A method that returns `Err` leaves the in-memory state and the table exactly as they were
//! before the call: most requests are checked before anything is written, and one that fails
//! part way (a txn whose later op fails) is undone. Only a storage error can leave rows behind;
//! then the caller must abort the redb transaction. After a *successful* call, the
//! in-memory state describes the table as written in that transaction: if the caller aborts the
//! transaction anyway, it must rebuild the state with [`Mvcc::open`].
//!
//! The caller may keep one write transaction open across many requests and commit it later
//! (the server commits every heartbeat, as etcd's backend commits its batch): until the caller
//! reports the commit with [`Mvcc::committed`], the rows written are also kept in memory, so
//! readers see every applied write at once.
//!
//! Reads ([`Mvcc::range`]) look revisions up in the index and read them from those in-memory
//! rows or from the table given, which must show the state the index describes up to the last
//! commit: a read transaction begun after it (or the write transaction itself).

mod index;
#[cfg(test)]
mod tests;
mod validate;

use std::cmp::Ordering;

use prost::Message;
use redb::{ReadTransaction, ReadableTable, TableError, WriteTransaction};

use crate::proto::detcdpb::{MvccRow, SnapshotData};
use crate::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{event::EventType, Event as WatchEvent, KeyValue};
use crate::tables::{self, meta_keys};

pub use index::Revision;
use index::{Event, Index, KeyRange};
pub use validate::DEFAULT_MAX_TXN_OPS;

/// Errors of the state machine. Display strings are etcd's, byte for byte, for the ones a
/// client can see; see [`MvccError::grpc_code`] for the status code etcd sends with each.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// Put with ignore_value/ignore_lease on an absent key; also an empty RequestOp in a txn.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A write that would grow the store while a NOSPACE alarm is raised, or that the quota
    /// refuses (etcd's ErrNoSpace; code ResourceExhausted).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A put names a lease that does not exist (etcd's lease.ErrLeaseNotFound, checked at
    /// apply along a txn's taken branch).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease grant, revoke or checkpoint refused by the lessor.
    #[error("{0}")]
    Lease(#[from] crate::lease::LeaseError),
    /// [`Mvcc::txn_read`] was given a txn with writes (those go through raft).
    #[error("detcd: txn request is not read-only")]
    NotReadOnly,
    #[error("mvcc storage error: {0}")]
    Storage(#[from] redb::Error),
    #[error("mvcc data is corrupt: {0}")]
    Corrupt(String),
}

impl From<redb::StorageError> for MvccError {
    fn from(e: redb::StorageError) -> Self {
        MvccError::Storage(e.into())
    }
}

impl From<TableError> for MvccError {
    fn from(e: TableError) -> Self {
        MvccError::Storage(e.into())
    }
}

/// gRPC status codes (numeric, as `tonic::Code::from(i32)` takes them).
pub mod grpc_code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const INTERNAL: i32 = 13;
}

impl MvccError {
    /// The gRPC status code etcd answers this error with (`rpctypes/error.go`): OutOfRange for
    /// Compacted and FutureRev; InvalidArgument for the request errors, "key not found"
    /// included (etcd's ErrGRPCKeyNotFound is InvalidArgument, not NotFound); Internal for
    /// detcd's own storage failures.
    pub fn grpc_code(&self) -> i32 {
        use MvccError::*;
        match self {
            Compacted | FutureRev => grpc_code::OUT_OF_RANGE,
            KeyNotFound | EmptyKey | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption => grpc_code::INVALID_ARGUMENT,
            NotReadOnly | Storage(_) | Corrupt(_) => grpc_code::INTERNAL,
            LeaseNotFound => grpc_code::NOT_FOUND,
            NoSpace => grpc_code::RESOURCE_EXHAUSTED,
            Lease(e) => match e {
                crate::lease::LeaseError::NotFound => grpc_code::NOT_FOUND,
                crate::lease::LeaseError::Exists => grpc_code::FAILED_PRECONDITION,
                crate::lease::LeaseError::TtlTooLarge => grpc_code::OUT_OF_RANGE,
                crate::lease::LeaseError::NotPrimary => grpc_code::FAILED_PRECONDITION,
            },
        }
    }
}

const REV_LEN: usize = 16;
const TOMBSTONE_MARK: u8 = b't';

/// The KV-table key of a revision.
pub fn revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(REV_LEN + 1);
    k.extend_from_slice(&(rev.main as u64).to_be_bytes());
    k.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        k.push(TOMBSTONE_MARK);
    }
    k
}

/// Parses a KV-table key: the revision and whether it marks a deletion.
pub fn parse_revision_key(k: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match k.len() {
        REV_LEN => false,
        n if n == REV_LEN + 1 && k[REV_LEN] == TOMBSTONE_MARK => true,
        _ => return None,
    };
    let main = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[8..16].try_into().ok()?) as i64;
    Some((Revision { main, sub }, tombstone))
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn corrupt(what: impl std::fmt::Display) -> MvccError {
    MvccError::Corrupt(what.to_string())
}

/// Where revisions found in the index are read from.
trait Rows {
    fn row(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError>;
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> Rows for T {
    fn row(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(self.get(key)?.map(|g| g.value().to_vec()))
    }
}

/// The KV table of a database that has never had one: it has no rows, and a consistent index
/// never asks for any.
struct NoRows;

impl Rows for NoRows {
    fn row(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(None)
    }
}

/// Rows not yet committed, in front of a table's.
struct Layered<'a, B> {
    uncommitted: &'a imbl::OrdMap<Vec<u8>, Vec<u8>>,
    table: &'a B,
}

impl<B: Rows> Rows for Layered<'_, B> {
    fn row(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        match self.uncommitted.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None => self.table.row(key),
        }
    }
}

fn read_kv(rows: &impl Rows, rev: Revision) -> Result<KeyValue, MvccError> {
    let raw = rows
        .row(&revision_key(rev, false))?
        .ok_or_else(|| corrupt(format!("no row for revision {}.{}", rev.main, rev.sub)))?;
    KeyValue::decode(raw.as_slice()).map_err(corrupt)
}

type KvTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// One write request in progress.
struct WriteState {
    /// The store revision when it began; its writes get `begin + 1`.
    begin: i64,
    /// Changes so far (the next change's `sub`).
    changes: i64,
    /// Keys whose index lists got an event, in order, to undo on failure.
    undo: Vec<Vec<u8>>,
    /// Revision keys of the rows written, to forget on failure.
    rows: Vec<Vec<u8>>,
    /// The changes as watch events, published on success ([`Mvcc::take_events`]).
    events: Vec<WatchEvent>,
    /// Put and DeleteRange operations done, counted into [`Mvcc::op_counts`] on success.
    ops: OpCounts,
}

/// Write operations this member applied since it started, as etcd's mvcc/metrics_txn.go
/// counts them for `etcd_mvcc_put_total`, `etcd_mvcc_delete_total` and
/// `etcd_debugging_mvcc_total_put_size_in_bytes`: every Put and DeleteRange operation
/// applied (those inside a txn's taken branch included; a DeleteRange counts once however
/// many keys it deletes), and the key and value bytes of the puts. Not replicated state: a
/// restart starts again from zero, as etcd's counters do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub puts: u64,
    pub deletes: u64,
    pub put_bytes: u64,
}

impl WriteState {
    fn next_rev(&mut self) -> Revision {
        let rev = Revision {
            main: self.begin + 1,
            sub: self.changes,
        };
        self.changes += 1;
        rev
    }

    /// The revision reads inside the request see: etcd's storeTxnWrite.Range.
    fn view_rev(&self) -> i64 {
        self.begin + i64::from(self.changes > 0)
    }
}

/// The branch each txn (and nested txn) takes, decided against the state before any write.
struct Plan {
    succeeded: bool,
    /// One per nested txn op of the taken branch, in order.
    children: Vec<Plan>,
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int = |v: Option<i64>| v.unwrap_or(0);
    let u = c.target_union.as_ref();
    let result = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match u {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int(match u {
            Some(TargetUnion::CreateRevision(r)) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int(match u {
            Some(TargetUnion::ModRevision(r)) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int(match u {
            Some(TargetUnion::Version(r)) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int(match u {
            Some(TargetUnion::Lease(r)) => Some(*r),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => result == Ordering::Equal,
        Ok(CompareResult::NotEqual) => result != Ordering::Equal,
        Ok(CompareResult::Greater) => result == Ordering::Greater,
        Ok(CompareResult::Less) => result == Ordering::Less,
        Err(_) => true,
    }
}

/// etcd's isTxnReadonly: every op of both branches is a Range (a nested txn counts as a write).
pub fn is_txn_readonly(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// The MVCC state: the in-memory key index and the store's revisions. See the module docs.
/// Two states are equal when they describe the same store (events not yet taken aside).
#[derive(Debug, Clone)]
pub struct Mvcc {
    index: Index,
    /// Rows written since the caller last reported a commit ([`Mvcc::committed`]): a read
    /// transaction cannot see them yet. Revision key to encoded KeyValue, as in the table.
    uncommitted: imbl::OrdMap<Vec<u8>, Vec<u8>>,
    current_rev: i64,
    /// -1 until the first compaction, as etcd's compactMainRev.
    compact_rev: i64,
    /// Writes applied so far (for /metrics; not part of the state: see [`OpCounts`]).
    ops: OpCounts,
    /// Changes of the writes applied since the caller last took them, in revision order
    /// (what Watch and the lessor learn of each write).
    events: Vec<WatchEvent>,
    /// Bytes of the KV table's rows (revision keys plus encoded values): the store's
    /// logical size, which compaction lowers. The space quota counts this.
    stored_bytes: u64,
}

impl PartialEq for Mvcc {
    fn eq(&self, other: &Mvcc) -> bool {
        self.index == other.index
            && self.uncommitted == other.uncommitted
            && self.current_rev == other.current_rev
            && self.compact_rev == other.compact_rev
    }
}

impl Eq for Mvcc {}

/// A KV-table row: revision key, encoded KeyValue.
type Row = (Vec<u8>, Vec<u8>);

/// Which lease IDs exist, asked by puts that name one (etcd checks at apply).
pub type LeaseExists<'a> = &'a dyn Fn(i64) -> bool;

/// The keys carrying a lease in the current state, each with its lease: what the lessor
/// attaches at load or snapshot install.
pub type LeasedKeys = Vec<(Vec<u8>, i64)>;

impl Mvcc {
    /// Rebuilds the state from the tables; a database without them is an empty store.
    pub fn open(txn: &ReadTransaction) -> Result<Mvcc, MvccError> {
        Self::open_leased(txn).map(|(m, _)| m)
    }

    /// [`Mvcc::open`], also returning the keys whose current version carries a lease.
    pub fn open_leased(txn: &ReadTransaction) -> Result<(Mvcc, LeasedKeys), MvccError> {
        let compact_rev = match txn.open_table(tables::META) {
            Ok(meta) => match meta.get(meta_keys::MVCC_COMPACT_REVISION)? {
                Some(v) => decode_i64(v.value())?,
                None => -1,
            },
            Err(TableError::TableDoesNotExist(_)) => -1,
            Err(e) => return Err(e.into()),
        };
        match txn.open_table(tables::KV) {
            Ok(kv) => Self::rebuild(&kv, compact_rev),
            Err(TableError::TableDoesNotExist(_)) => Ok((Self::empty(compact_rev), Vec::new())),
            Err(e) => Err(e.into()),
        }
    }

    fn empty(compact_rev: i64) -> Mvcc {
        Mvcc {
            index: Index::default(),
            uncommitted: imbl::OrdMap::new(),
            current_rev: compact_rev.max(1),
            compact_rev,
            events: Vec::new(),
            stored_bytes: 0,
            ops: OpCounts::default(),
        }
    }

    fn rebuild(
        kv: &impl ReadableTable<&'static [u8], &'static [u8]>,
        compact_rev: i64,
    ) -> Result<(Mvcc, LeasedKeys), MvccError> {
        let mut m = Self::empty(compact_rev);
        // Rows come in revision order: the last one of a key decides its lease.
        let mut leased = std::collections::BTreeMap::new();
        for row in kv.iter()? {
            let (k, v) = row?;
            let (rev, tombstone) = parse_revision_key(k.value())
                .ok_or_else(|| corrupt(format!("bad revision key {:?}", k.value())))?;
            let kvp = KeyValue::decode(v.value()).map_err(corrupt)?;
            m.stored_bytes += (k.value().len() + v.value().len()) as u64;
            m.index.push(&kvp.key, Event { rev, tombstone });
            m.current_rev = m.current_rev.max(rev.main);
            if tombstone || kvp.lease == 0 {
                leased.remove(&kvp.key);
            } else {
                leased.insert(kvp.key, kvp.lease);
            }
        }
        Ok((m, leased.into_iter().collect()))
    }

    /// Bytes the KV table's rows take (keys and values of every revision kept): etcd's
    /// "database size in use" for detcd, and what the space quota counts.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// The store revision: that of the last write.
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// The last compaction's revision, or -1 if there has been none.
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// Writes applied since start ([`OpCounts`]).
    pub fn op_counts(&self) -> OpCounts {
        self.ops
    }

    /// Carries the counts of the state this one replaces (a snapshot install) over.
    pub fn keep_op_counts(&mut self, from: OpCounts) {
        self.ops = from;
    }

    /// How many keys exist at the current revision (etcd's `etcd_debugging_mvcc_keys_total`).
    pub fn live_keys(&self) -> usize {
        self.index.live_keys()
    }

    /// The caller committed the write transaction holding every write applied so far: reads
    /// find those rows in the table from now on.
    pub fn committed(&mut self) {
        self.uncommitted = imbl::OrdMap::new();
    }

    /// The changes of every write since the last call, as watch events in revision order: a
    /// put's event carries the new KeyValue, a delete's only the key and the deleting
    /// revision (etcd's watchable_store_txn.go). No prev_kv: a watcher that wants it reads
    /// the key at the revision before.
    pub fn take_events(&mut self) -> Vec<WatchEvent> {
        std::mem::take(&mut self.events)
    }

    /// Rows written and not yet reported committed (the caller bounds this by committing).
    pub fn uncommitted_rows(&self) -> usize {
        self.uncommitted.len()
    }

    fn layered<'a, B: Rows>(&'a self, table: &'a B) -> Layered<'a, B> {
        Layered {
            uncommitted: &self.uncommitted,
            table,
        }
    }

    // ---- reads ----

    /// A Range request (also runs etcd's gRPC-layer checks: empty key, sort options).
    /// `kv` is the KV table, from a read transaction consistent with this state (module docs).
    /// The header carries only the revision; the caller fills cluster, member and term.
    pub fn range(
        &self,
        kv: &impl ReadableTable<&'static [u8], &'static [u8]>,
        req: &RangeRequest,
    ) -> Result<RangeResponse, MvccError> {
        validate::check_range(req)?;
        self.range_view(&self.layered(kv), req, self.current_rev)
    }

    /// [`Mvcc::range`] opening the KV table of `txn` itself (a database that never had a write
    /// has no KV table yet).
    pub fn range_in(
        &self,
        txn: &ReadTransaction,
        req: &RangeRequest,
    ) -> Result<RangeResponse, MvccError> {
        validate::check_range(req)?;
        match txn.open_table(tables::KV) {
            Ok(kv) => self.range_view(&self.layered(&kv), req, self.current_rev),
            Err(TableError::TableDoesNotExist(_)) => {
                self.range_view(&self.layered(&NoRows), req, self.current_rev)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The version of `key` visible at revision `at` (None if absent then, or compacted
    /// away), read through `txn` as [`Mvcc::range_in`] reads: a watch event's prev_kv.
    pub fn kv_at_in(
        &self,
        txn: &ReadTransaction,
        key: &[u8],
        at: i64,
    ) -> Result<Option<KeyValue>, MvccError> {
        let Some(rev) = self.index.get(key, at) else {
            return Ok(None);
        };
        match txn.open_table(tables::KV) {
            Ok(kv) => read_kv(&self.layered(&kv), rev).map(Some),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The changes of main revisions `from..=to` as watch events (as [`Mvcc::take_events`]
    /// gives them), read through `txn` (a read transaction consistent with this state): what a
    /// watcher that fell behind catches up from. Stops after the revision in which the count
    /// reaches `max_events`, so one revision's events are never split. Returns the events and
    /// the last revision covered. The caller checks `from` against the compacted revision
    /// (before and after: a compaction may have removed rows since the view was taken).
    pub fn history_in(
        &self,
        txn: &ReadTransaction,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> Result<(Vec<WatchEvent>, i64), MvccError> {
        let (from, to) = (from.max(1), to.min(self.current_rev));
        if from > to {
            return Ok((Vec::new(), to));
        }
        let lo = revision_key(Revision { main: from, sub: 0 }, false);
        let hi = revision_key(
            Revision {
                main: to + 1,
                sub: 0,
            },
            false,
        );
        let mut events = Vec::new();
        let mut last = to;
        let mut full = false;
        self.for_each_row_in(txn, &lo, &hi, |k, v| {
            let (main, event) = row_event(k, v)?;
            if events.len() >= max_events && main != last {
                // `last` is the revision before the one not taken.
                full = true;
                return Ok(false);
            }
            last = main;
            events.push(event);
            Ok(true)
        })?;
        if full {
            return Ok((events, last));
        }
        Ok((events, to))
    }

    /// Calls `f` with every row whose revision key is in `lo..hi`, in revision order: the
    /// rows of `txn`'s KV table merged with those not yet committed (a row in both counts
    /// once). `f` returns false to stop.
    fn for_each_row_in(
        &self,
        txn: &ReadTransaction,
        lo: &[u8],
        hi: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, MvccError>,
    ) -> Result<(), MvccError> {
        let mut pending = self
            .uncommitted
            .range(lo.to_vec()..hi.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .peekable();
        let table = match txn.open_table(tables::KV) {
            Ok(t) => Some(t),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut stored = match &table {
            Some(t) => Some(t.range(lo..hi)?),
            None => None,
        };
        let mut next_stored = || -> Result<Option<Row>, MvccError> {
            match stored.as_mut().and_then(|it| it.next()) {
                Some(r) => {
                    let (k, v) = r?;
                    Ok(Some((k.value().to_vec(), v.value().to_vec())))
                }
                None => Ok(None),
            }
        };
        let mut head = next_stored()?;
        loop {
            let pk = pending.peek().map(|(k, _)| k.clone());
            if matches!((&pk, &head), (Some(p), Some((s, _))) if p == s) {
                head = next_stored()?;
            }
            let take_pending = match (&pk, &head) {
                (None, None) => return Ok(()),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(p), Some((s, _))) => p < s,
            };
            let (k, v) = if take_pending {
                pending.next().expect("peeked")
            } else {
                let row = head.take().expect("present");
                head = next_stored()?;
                row
            };
            if !f(&k, &v)? {
                return Ok(());
            }
        }
    }

    /// etcd's HashKV (mvcc/kvstore.go `HashByRev`): a CRC-32C over `key` then, in revision
    /// order, every row up to `rev` (0: the current revision) as etcd's bucket holds it (its
    /// revision key `main` `_` `sub` [`t`], its encoded KeyValue), leaving out rows at or
    /// below the compacted revision that a compaction at `rev` would drop. The same store
    /// gives etcd's hash. Returns (hash, current revision, compacted revision); errors:
    /// Compacted, FutureRev.
    pub fn hash_kv_in(
        &self,
        txn: &ReadTransaction,
        rev: i64,
    ) -> Result<(u32, i64, i64), MvccError> {
        let compact_rev = self.compact_rev;
        if rev > 0 && rev <= compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev == 0 { self.current_rev } else { rev };
        // Rows at or below the compacted revision count only if etcd's would (a row the
        // index no longer has is one a compaction deleted, maybe not yet committed).
        let hashed_below = self.index.hashed_below(rev, compact_rev);
        let mut crc = crc32c::crc32c(b"key");
        let hi = revision_key(
            Revision {
                main: rev + 1,
                sub: 0,
            },
            false,
        );
        self.for_each_row_in(txn, &[], &hi, |k, v| {
            let (r, tombstone) =
                parse_revision_key(k).ok_or_else(|| corrupt(format!("bad revision key {k:?}")))?;
            if r.main <= compact_rev && !hashed_below.contains(&(r, tombstone)) {
                return Ok(true);
            }
            let mut etcd_key = [0u8; 18];
            etcd_key[..8].copy_from_slice(&k[..8]);
            etcd_key[8] = b'_';
            etcd_key[9..17].copy_from_slice(&k[8..16]);
            let len = if tombstone {
                etcd_key[17] = b't';
                18
            } else {
                17
            };
            crc = crc32c::crc32c_append(crc, &etcd_key[..len]);
            crc = crc32c::crc32c_append(crc, v);
            Ok(true)
        })?;
        Ok((crc, self.current_rev, compact_rev))
    }

    /// A read-only txn (see [`is_txn_readonly`]) served without raft, as etcd serves them after
    /// a ReadIndex. A txn with writes is refused with [`MvccError::NotReadOnly`].
    pub fn txn_read(
        &self,
        kv: &impl ReadableTable<&'static [u8], &'static [u8]>,
        req: &TxnRequest,
    ) -> Result<TxnResponse, MvccError> {
        self.txn_read_rows(&self.layered(kv), req)
    }

    /// [`Mvcc::txn_read`] opening the KV table of `txn` itself (a database that never had a
    /// write has no KV table yet).
    pub fn txn_read_in(
        &self,
        txn: &ReadTransaction,
        req: &TxnRequest,
    ) -> Result<TxnResponse, MvccError> {
        match txn.open_table(tables::KV) {
            Ok(kv) => self.txn_read_rows(&self.layered(&kv), req),
            Err(TableError::TableDoesNotExist(_)) => {
                self.txn_read_rows(&self.layered(&NoRows), req)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn txn_read_rows(&self, rows: &impl Rows, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        validate::check_txn_full(req, usize::MAX)?;
        if !is_txn_readonly(req) {
            return Err(MvccError::NotReadOnly);
        }
        let at = self.current_rev;
        let plan = self.plan(rows, req, at)?;
        self.check_ranges(req, &plan, at)?;
        let mut responses = Vec::new();
        for op in branch(req, plan.succeeded) {
            if let Some(Request::RequestRange(r)) = &op.request {
                let resp = self.range_view(rows, r, at)?;
                responses.push(ResponseOp {
                    response: Some(Response::ResponseRange(resp)),
                });
            }
        }
        Ok(TxnResponse {
            header: header(at),
            succeeded: plan.succeeded,
            responses,
        })
    }

    /// etcd's applierV3backend.Range over a view at store revision `cur_rev`.
    fn range_view(
        &self,
        rows: &impl Rows,
        req: &RangeRequest,
        cur_rev: i64,
    ) -> Result<RangeResponse, MvccError> {
        let mut rev = req.revision;
        if rev > cur_rev {
            return Err(MvccError::FutureRev);
        }
        if rev <= 0 {
            rev = cur_rev;
        }
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let hits = self
            .index
            .range(KeyRange::new(&req.key, &req.range_end), rev);
        let mut resp = RangeResponse {
            header: header(cur_rev),
            kvs: Vec::new(),
            more: false,
            count: hits.len() as i64,
        };
        if req.count_only || hits.is_empty() {
            return Ok(resp);
        }

        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Fetch everything when sorting or filtering, else one more than the limit (for `more`).
        let mut fetch = if req.sort_order != SortOrder::None as i32 || filtered {
            0
        } else {
            req.limit
        };
        if fetch > 0 {
            fetch = fetch.wrapping_add(1);
        }
        let n = if fetch <= 0 || fetch as u64 > hits.len() as u64 {
            hits.len()
        } else {
            fetch as usize
        };
        let mut kvs = hits[..n]
            .iter()
            .map(|(_, r)| read_kv(rows, *r))
            .collect::<Result<Vec<_>, _>>()?;

        if req.max_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
        }
        if req.min_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
        }
        if req.max_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
        }
        if req.min_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
        }

        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        if target != SortTarget::Key && order == SortOrder::None {
            // The index yields key order already; any other target sorts ascending by default.
            order = SortOrder::Ascend;
        }
        let cmp = |a: &KeyValue, b: &KeyValue| match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        // Stable sorts: ties keep key order, in both directions.
        match order {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by(cmp),
            SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        }

        if req.limit > 0 && kvs.len() as u64 > req.limit as u64 {
            kvs.truncate(req.limit as usize);
            resp.more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        resp.kvs = kvs;
        Ok(resp)
    }

    /// Evaluates the compares of a txn and of the nested txns of the branches it takes, all
    /// against the store at `at` (etcd's compareToPath: before any of the txn's writes).
    fn plan(&self, rows: &impl Rows, req: &TxnRequest, at: i64) -> Result<Plan, MvccError> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare_holds(rows, c, at)? {
                succeeded = false;
                break;
            }
        }
        let mut children = Vec::new();
        for op in branch(req, succeeded) {
            if let Some(Request::RequestTxn(t)) = &op.request {
                children.push(self.plan(rows, t, at)?);
            }
        }
        Ok(Plan {
            succeeded,
            children,
        })
    }

    /// etcd's applyCompare: every key of the range must satisfy it; with no key, VALUE fails
    /// and the other targets compare against zero.
    fn compare_holds(&self, rows: &impl Rows, c: &Compare, at: i64) -> Result<bool, MvccError> {
        let hits = self.index.range(KeyRange::new(&c.key, &c.range_end), at);
        if hits.is_empty() {
            return Ok(
                c.target != CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default())
            );
        }
        for (_, rev) in hits {
            if !compare_kv(c, &read_kv(rows, rev)?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// etcd's checkRequests(checkPut): ignore_value/ignore_lease need the key to exist before
    /// the txn; a lease named must exist.
    fn check_puts(
        &self,
        req: &TxnRequest,
        plan: &Plan,
        at: i64,
        leases: LeaseExists<'_>,
    ) -> Result<(), MvccError> {
        let mut children = plan.children.iter();
        for op in branch(req, plan.succeeded) {
            match &op.request {
                Some(Request::RequestTxn(t)) => {
                    self.check_puts(t, children.next().expect("plan matches txn"), at, leases)?
                }
                Some(Request::RequestPut(p))
                    if (p.ignore_value || p.ignore_lease)
                        && self.index.get(&p.key, at).is_none() =>
                {
                    return Err(MvccError::KeyNotFound);
                }
                Some(Request::RequestPut(p))
                    if !p.ignore_lease && p.lease != 0 && !leases(p.lease) =>
                {
                    return Err(MvccError::LeaseNotFound);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// etcd's checkRequests(checkRange): a range's explicit revision must be neither in the
    /// future nor compacted, judged against the store before the txn. (Like etcd, a negative
    /// revision here is "compacted" once a compaction happened.)
    fn check_ranges(&self, req: &TxnRequest, plan: &Plan, at: i64) -> Result<(), MvccError> {
        let mut children = plan.children.iter();
        for op in branch(req, plan.succeeded) {
            match &op.request {
                Some(Request::RequestTxn(t)) => {
                    self.check_ranges(t, children.next().expect("plan matches txn"), at)?
                }
                Some(Request::RequestRange(r)) if r.revision != 0 => {
                    if r.revision > at {
                        return Err(MvccError::FutureRev);
                    }
                    if r.revision < self.compact_rev {
                        return Err(MvccError::Compacted);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ---- writes ----

    fn begin_write(&self) -> WriteState {
        WriteState {
            begin: self.current_rev,
            changes: 0,
            undo: Vec::new(),
            rows: Vec::new(),
            events: Vec::new(),
            ops: OpCounts::default(),
        }
    }

    /// Finishes a write request: on failure, undoes all it did, in memory and in the table
    /// (a txn can fail part way: a nested put with ignore_value whose key an earlier op of the
    /// same txn deleted; etcd 3.4 panics there).
    fn end_write<T>(
        &mut self,
        kv: &mut KvTable<'_>,
        ws: WriteState,
        result: Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        match result {
            Ok(v) => {
                if ws.changes > 0 {
                    self.current_rev = ws.begin + 1;
                }
                self.events.extend(ws.events);
                self.ops.puts += ws.ops.puts;
                self.ops.deletes += ws.ops.deletes;
                self.ops.put_bytes += ws.ops.put_bytes;
                Ok(v)
            }
            Err(e) => {
                for key in ws.undo.iter().rev() {
                    self.index.pop(key);
                }
                for row in &ws.rows {
                    if let Some(v) = self.uncommitted.remove(row) {
                        self.stored_bytes -= (row.len() + v.len()) as u64;
                    }
                    kv.remove(row.as_slice())?;
                }
                Err(e)
            }
        }
    }

    fn record(
        &mut self,
        kv: &mut KvTable<'_>,
        ws: &mut WriteState,
        value: &KeyValue,
        tombstone: bool,
    ) -> Result<(), MvccError> {
        let rev = ws.next_rev();
        let key = revision_key(rev, tombstone);
        let row = value.encode_to_vec();
        kv.insert(key.as_slice(), row.as_slice())?;
        self.stored_bytes += (key.len() + row.len()) as u64;
        self.uncommitted.insert(key.clone(), row);
        ws.rows.push(key);
        self.index.push(&value.key, Event { rev, tombstone });
        ws.undo.push(value.key.clone());
        ws.events
            .push(change_event(value.clone(), rev.main, tombstone));
        Ok(())
    }

    /// A Put. Errors: EmptyKey, ValueProvided, LeaseProvided (request checks), KeyNotFound
    /// (ignore_value / ignore_lease on an absent key).
    pub fn put(
        &mut self,
        txn: &WriteTransaction,
        req: &PutRequest,
    ) -> Result<PutResponse, MvccError> {
        self.put_leased(txn, req, &|_| true)
    }

    /// [`Mvcc::put`] where a lease the put names must exist (`leases`): LeaseNotFound if not.
    pub fn put_leased(
        &mut self,
        txn: &WriteTransaction,
        req: &PutRequest,
        leases: LeaseExists<'_>,
    ) -> Result<PutResponse, MvccError> {
        validate::check_put(req)?;
        let mut kv = txn.open_table(tables::KV)?;
        if !req.ignore_lease && req.lease != 0 && !leases(req.lease) {
            // etcd looks the key up first: ignore_value on an absent key is KeyNotFound.
            if req.ignore_value && self.index.get(&req.key, self.current_rev).is_none() {
                return Err(MvccError::KeyNotFound);
            }
            return Err(MvccError::LeaseNotFound);
        }
        let mut ws = self.begin_write();
        let r = self.exec_put(&mut kv, &mut ws, req);
        self.end_write(&mut kv, ws, r)
    }

    fn exec_put(
        &mut self,
        kv: &mut KvTable<'_>,
        ws: &mut WriteState,
        req: &PutRequest,
    ) -> Result<PutResponse, MvccError> {
        let main = ws.begin + 1;
        let prev = match self.index.get(&req.key, main) {
            Some(rev) => Some(read_kv(&*kv, rev)?),
            None => None,
        };
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let new = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(main, |p| p.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        self.record(kv, ws, &new, false)?;
        ws.ops.puts += 1;
        ws.ops.put_bytes += (req.key.len() + req.value.len()) as u64;
        Ok(PutResponse {
            header: header(main),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    /// A DeleteRange. Deleting nothing does not bump the revision. Error: EmptyKey.
    pub fn delete_range(
        &mut self,
        txn: &WriteTransaction,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        validate::check_delete(req)?;
        let mut kv = txn.open_table(tables::KV)?;
        let mut ws = self.begin_write();
        let r = self.exec_delete(&mut kv, &mut ws, req);
        self.end_write(&mut kv, ws, r)
    }

    fn exec_delete(
        &mut self,
        kv: &mut KvTable<'_>,
        ws: &mut WriteState,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let hits: Vec<(Vec<u8>, Revision)> = self
            .index
            .range(KeyRange::new(&req.key, &req.range_end), ws.begin + 1)
            .into_iter()
            .map(|(k, r)| (k.to_vec(), r))
            .collect();
        let prev_kvs = if req.prev_kv {
            hits.iter()
                .map(|(_, r)| read_kv(&*kv, *r))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        for (key, _) in hits.iter() {
            self.record(
                kv,
                ws,
                &KeyValue {
                    key: key.clone(),
                    ..Default::default()
                },
                true,
            )?;
        }
        let deleted = hits.len() as i64;
        let rev = if deleted != 0 || ws.changes > 0 {
            ws.begin + 1
        } else {
            ws.begin
        };
        ws.ops.deletes += 1;
        Ok(DeleteRangeResponse {
            header: header(rev),
            deleted,
            prev_kvs,
        })
    }

    /// A Txn: compares, then the ops of the taken branch in order, all writes sharing one main
    /// revision. Errors: the request checks (EmptyKey, DuplicateKey, ...; the op-count limit is
    /// the server's, see [`Mvcc::validate_txn`]), KeyNotFound, and FutureRev/Compacted for a
    /// range op's revision; all found before anything is written.
    ///
    /// Nested txn responses carry an empty header, as etcd's do; range/put/delete responses
    /// inside carry the revision they saw or wrote.
    pub fn txn(
        &mut self,
        txn: &WriteTransaction,
        req: &TxnRequest,
    ) -> Result<TxnResponse, MvccError> {
        self.txn_leased(txn, req, &|_| true)
    }

    /// [`Mvcc::txn`] where a lease named by a put of the taken branch must exist (`leases`):
    /// LeaseNotFound if not, before anything is written.
    pub fn txn_leased(
        &mut self,
        txn: &WriteTransaction,
        req: &TxnRequest,
        leases: LeaseExists<'_>,
    ) -> Result<TxnResponse, MvccError> {
        validate::check_txn_full(req, usize::MAX)?;
        let mut kv = txn.open_table(tables::KV)?;
        let at = self.current_rev;
        let plan = self.plan(&kv, req, at)?;
        self.check_puts(req, &plan, at, leases)?;
        self.check_ranges(req, &plan, at)?;
        let mut ws = self.begin_write();
        let r = self.exec_txn(&mut kv, &mut ws, req, &plan).map(|mut resp| {
            resp.header = header(ws.view_rev());
            resp
        });
        self.end_write(&mut kv, ws, r)
    }

    fn exec_txn(
        &mut self,
        kv: &mut KvTable<'_>,
        ws: &mut WriteState,
        req: &TxnRequest,
        plan: &Plan,
    ) -> Result<TxnResponse, MvccError> {
        let mut children = plan.children.iter();
        let ops = branch(req, plan.succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(Request::RequestRange(r)) => {
                    Response::ResponseRange(self.range_view(&*kv, r, ws.view_rev())?)
                }
                Some(Request::RequestPut(p)) => Response::ResponsePut(self.exec_put(kv, ws, p)?),
                Some(Request::RequestDeleteRange(d)) => {
                    Response::ResponseDeleteRange(self.exec_delete(kv, ws, d)?)
                }
                Some(Request::RequestTxn(t)) => {
                    let child = children.next().expect("plan matches txn");
                    Response::ResponseTxn(self.exec_txn(kv, ws, t, child)?)
                }
                None => return Err(MvccError::KeyNotFound),
            };
            responses.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: plan.succeeded,
            responses,
        })
    }

    /// Compacts: drops every key's history older than `rev`, keeping for each key its latest
    /// revision `<= rev` unless that is a deletion; persists the compacted revision.
    /// Errors: Compacted if `rev <=` the last compaction, FutureRev if `rev >` the store revision.
    pub fn compact(
        &mut self,
        txn: &WriteTransaction,
        rev: i64,
    ) -> Result<CompactionResponse, MvccError> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRev);
        }
        let plan = self.index.compact_plan(rev);
        {
            let mut kv = txn.open_table(tables::KV)?;
            for (r, tombstone) in &plan.rows {
                let key = revision_key(*r, *tombstone);
                if let Some(old) = kv.remove(key.as_slice())? {
                    self.stored_bytes = self
                        .stored_bytes
                        .saturating_sub((key.len() + old.value().len()) as u64);
                }
                self.uncommitted.remove(&key);
            }
        }
        {
            let mut meta = txn.open_table(tables::META)?;
            meta.insert(
                meta_keys::MVCC_COMPACT_REVISION,
                rev.to_be_bytes().as_slice(),
            )?;
        }
        self.index.apply_compaction(plan);
        self.compact_rev = rev;
        Ok(CompactionResponse {
            header: header(self.current_rev),
        })
    }

    // ---- checks the server makes before proposing ----

    /// etcd's gRPC-layer checks of a Txn (op-count limit, empty keys, value/lease provided,
    /// empty ops, duplicate keys). Pure; run it before proposing.
    pub fn validate_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), MvccError> {
        validate::check_txn_full(req, max_txn_ops)
    }

    /// etcd's gRPC-layer checks of a Put (empty key, value/lease provided with ignore_*).
    pub fn validate_put(req: &PutRequest) -> Result<(), MvccError> {
        validate::check_put(req)
    }

    /// etcd's gRPC-layer check of a DeleteRange (empty key).
    pub fn validate_delete_range(req: &DeleteRangeRequest) -> Result<(), MvccError> {
        validate::check_delete(req)
    }

    /// etcd's gRPC-layer checks of a Range (empty key, sort options).
    pub fn validate_range(req: &RangeRequest) -> Result<(), MvccError> {
        validate::check_range(req)
    }

    // ---- snapshots ----

    /// Writes the whole MVCC state into `out` (rows, current and compacted revisions); the other
    /// fields of `out` are left alone. `txn` must be consistent with this state (module docs).
    /// Every write must have been committed first ([`Mvcc::committed`]).
    pub fn export(&self, txn: &ReadTransaction, out: &mut SnapshotData) -> Result<(), MvccError> {
        if !self.uncommitted.is_empty() {
            return Err(corrupt("export asked for with writes not yet committed"));
        }
        Self::export_from(txn, self.current_rev, self.compact_rev, out)
    }

    /// Every row of the KV table in key order, handed to `row(revision key, encoded value)`:
    /// the rows of [`Mvcc::export`], streamed, so a snapshot file is written without the
    /// whole store in memory. Runs on a read transaction alone (the state may move on).
    pub fn export_rows<E: From<MvccError>>(
        txn: &ReadTransaction,
        mut row: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match txn.open_table(tables::KV) {
            Ok(kv) => {
                for r in kv.iter().map_err(MvccError::from)? {
                    let (k, v) = r.map_err(MvccError::from)?;
                    row(k.value(), v.value())?;
                }
                Ok(())
            }
            Err(TableError::TableDoesNotExist(_)) => Ok(()),
            Err(e) => Err(MvccError::from(e).into()),
        }
    }

    /// [`Mvcc::export`] from a read transaction and the revisions that went with it, without
    /// the state itself (so it can run elsewhere while the state moves on).
    pub fn export_from(
        txn: &ReadTransaction,
        current_rev: i64,
        compact_rev: i64,
        out: &mut SnapshotData,
    ) -> Result<(), MvccError> {
        out.rows.clear();
        Self::export_rows(txn, |k: &[u8], v: &[u8]| -> Result<(), MvccError> {
            out.rows.push(MvccRow {
                revision: k.to_vec(),
                value: v.to_vec(),
            });
            Ok(())
        })?;
        out.current_revision = current_rev;
        out.compact_revision = compact_rev;
        Ok(())
    }

    /// Replaces the KV table and the compacted revision with a snapshot's, and returns the
    /// state they describe. A SnapshotData with all MVCC fields at their defaults is an empty
    /// store. Errors with Corrupt if a row is malformed or the rows disagree with the
    /// snapshot's current revision.
    pub fn import(txn: &WriteTransaction, data: &SnapshotData) -> Result<Mvcc, MvccError> {
        let rows = data.rows.iter().map(|r| Ok::<_, MvccError>(r.clone()));
        Self::import_rows(txn, data, rows).map(|(m, _)| m)
    }

    /// [`Mvcc::import`] with the rows streamed (`head`'s own rows are ignored), in the one
    /// transaction `txn`: `detcd snapshot restore` writes a new data file this way. The first
    /// error from `rows` ends the import; the transaction must then be dropped, not committed.
    pub fn import_rows<E: From<MvccError>>(
        txn: &WriteTransaction,
        head: &SnapshotData,
        rows: impl Iterator<Item = Result<MvccRow, E>>,
    ) -> Result<(Mvcc, LeasedKeys), E> {
        let mut any_row = false;
        {
            let mut kv = txn.open_table(tables::KV).map_err(MvccError::from)?;
            kv.retain(|_, _| false).map_err(MvccError::from)?;
            for row in rows {
                let row = row?;
                any_row = true;
                insert_snapshot_row(&mut kv, &row)?;
            }
        }
        Self::finish_import(txn, head, any_row)
    }

    /// The first half of installing a snapshot in a live data file: writes `rows` into the
    /// staging table (`tables::KV_INSTALL`, emptied first) in durable commits of about
    /// `commit_bytes` of rows each, and returns how many rows it wrote. One commit of a whole
    /// store (hundreds of MB) is one flush that every other fsync on the disk waits behind;
    /// bounded commits keep that wait short (issue 8: the leader's puts stalled ~1 s while a
    /// follower installed 320 MB). The KV table is untouched, so reads keep their state and a
    /// crash or error here leaves the member as it was. [`Mvcc::import_staged`] finishes.
    pub fn stage_rows<E: From<MvccError>>(
        db: &redb::Database,
        rows: impl Iterator<Item = Result<MvccRow, E>>,
        commit_bytes: usize,
    ) -> Result<u64, E> {
        let storage = |e: redb::Error| E::from(MvccError::Storage(e));
        let begin = || -> Result<WriteTransaction, E> {
            let mut txn = db.begin_write().map_err(|e| storage(e.into()))?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(|e| storage(e.into()))?;
            Ok(txn)
        };
        let mut txn = begin()?;
        txn.delete_table(tables::KV_INSTALL)
            .map_err(MvccError::from)?;
        let mut written = 0u64;
        let mut pending = 0usize;
        let mut rows = rows.peekable();
        loop {
            {
                let mut staged = txn
                    .open_table(tables::KV_INSTALL)
                    .map_err(MvccError::from)?;
                while pending < commit_bytes {
                    let Some(row) = rows.next() else { break };
                    let row = row?;
                    insert_snapshot_row(&mut staged, &row)?;
                    pending += row.revision.len() + row.value.len();
                    written += 1;
                }
            }
            let more = rows.peek().is_some();
            txn.commit().map_err(|e| storage(e.into()))?;
            if !more {
                return Ok(written);
            }
            pending = 0;
            txn = begin()?;
        }
    }

    /// The second half of a snapshot install, in `txn` (the install's last commit): the
    /// staged rows replace the KV table (a rename, not a copy), the compacted revision is set
    /// and the state is rebuilt from the rows. Errors with Corrupt if the rows disagree with
    /// `head`'s current revision.
    pub fn import_staged(
        txn: &WriteTransaction,
        head: &SnapshotData,
        staged_rows: u64,
    ) -> Result<(Mvcc, LeasedKeys), MvccError> {
        txn.delete_table(tables::KV)?;
        txn.rename_table(tables::KV_INSTALL, tables::KV)?;
        Self::finish_import(txn, head, staged_rows > 0)
    }

    /// The compacted revision and the rebuild shared by both imports.
    fn finish_import<E: From<MvccError>>(
        txn: &WriteTransaction,
        head: &SnapshotData,
        any_row: bool,
    ) -> Result<(Mvcc, LeasedKeys), E> {
        let unset = !any_row && head.current_revision == 0 && head.compact_revision == 0;
        let compact_rev = if unset { -1 } else { head.compact_revision };
        {
            let mut meta = txn.open_table(tables::META).map_err(MvccError::from)?;
            if compact_rev >= 0 {
                meta.insert(
                    meta_keys::MVCC_COMPACT_REVISION,
                    compact_rev.to_be_bytes().as_slice(),
                )
                .map_err(MvccError::from)?;
            } else {
                meta.remove(meta_keys::MVCC_COMPACT_REVISION)
                    .map_err(MvccError::from)?;
            }
        }
        let kv = txn.open_table(tables::KV).map_err(MvccError::from)?;
        let (m, leased) = Self::rebuild(&kv, compact_rev)?;
        if !unset && m.current_rev != head.current_revision {
            return Err(corrupt(format!(
                "snapshot says revision {} but its rows say {}",
                head.current_revision, m.current_rev
            ))
            .into());
        }
        Ok((m, leased))
    }
}

/// Writes one snapshot row into a KV-shaped table, refusing a malformed revision key.
fn insert_snapshot_row(
    table: &mut redb::Table<&'static [u8], &'static [u8]>,
    row: &MvccRow,
) -> Result<(), MvccError> {
    if parse_revision_key(&row.revision).is_none() {
        return Err(corrupt(format!(
            "bad revision key {:?} in snapshot",
            row.revision
        )));
    }
    table.insert(row.revision.as_slice(), row.value.as_slice())?;
    Ok(())
}

/// A KV-table row as a watch event, with its main revision.
fn row_event(k: &[u8], v: &[u8]) -> Result<(i64, WatchEvent), MvccError> {
    let (rev, tombstone) =
        parse_revision_key(k).ok_or_else(|| corrupt(format!("bad revision key {k:?}")))?;
    let kv = KeyValue::decode(v).map_err(corrupt)?;
    Ok((rev.main, change_event(kv, rev.main, tombstone)))
}

/// One change as a watch event: a put carries the new KeyValue; a delete only the key and the
/// deleting revision (etcd's watchable_store_txn.go).
fn change_event(kv: KeyValue, main: i64, tombstone: bool) -> WatchEvent {
    if tombstone {
        WatchEvent {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: kv.key,
                mod_revision: main,
                ..Default::default()
            }),
            prev_kv: None,
        }
    } else {
        WatchEvent {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        }
    }
}

fn decode_i64(b: &[u8]) -> Result<i64, MvccError> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| corrupt("compact revision is not 8 bytes"))?;
    Ok(i64::from_be_bytes(arr))
}
