//! The replicated state machine: what applying one committed raft entry does, over its
//! sub-stores (the MVCC key-value store, the member table and the leases; auth, alarms and
//! the v2 store join here).
//!
//! Every write's changes come out as watch events ([`KvState::take_events`]), in revision
//! order: Watch publishes them, and the lessor attaches and detaches keys from them.
//!
//! One redb write transaction holds everything applied since the last durable commit (etcd's
//! backend batch). Readers see those writes at once through the MVCC store's uncommitted rows.
//! The transaction is handed out whole to be committed off the raft driver
//! ([`KvState::take_commit`]) and reported back ([`KvState::committed`]); applying waits for no
//! commit except when a second one would be needed before the first is back.
//!
//! Errors come in two kinds and are never mixed up: a request the store refuses (compacted
//! revision, key not found in a txn put with ignore_value, ...) is the client's answer; a
//! storage failure is [`Fatal`] and the member must stop, its open transaction dropped, so no
//! half-applied batch ever becomes durable.

use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::{Mvcc, MvccError};
use crate::proto::detcdpb::{
    internal_request::Request, InternalRequest, SnapshotData, SnapshotRef,
};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::{event::EventType, Event as WatchEvent};
use crate::raft_log::LogError;
use crate::tables::{meta_keys, META};
use crate::v2store::V2Store;
use prost::Message as _;
use raft::prelude::{ConfState, Snapshot};
use redb::{Durability, ReadableDatabase};
use snapshot::{FileCheck, SnapshotFileError, SnapshotReader, SnapshotWriter};
use std::io::{Read, Write};
use std::sync::Arc;

pub mod snapshot;
pub mod v2_rows;

/// What applying one request produced (the client's answer, before its header is filled).
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    LeaseCheckpoint,
    /// An alarm raised or cleared: the alarms it changed (none if it changed nothing).
    Alarm(pb::AlarmResponse),
    /// A member published its name and client URLs.
    Attributes,
    /// A v2 keys request: its event, or the v2 error that is the client's answer.
    V2(Box<Result<crate::v2store::Event, crate::v2store::V2Error>>),
    /// A membership change applied at this raft index.
    MemberChanged {
        index: u64,
    },
    /// Leadership moved to the member a MoveLeader asked for (no entry applied; see
    /// `Server::handle_move_leader`).
    LeaderMoved,
}

/// A failure that stops the member: continuing would answer clients from a store that no
/// longer matches the log. The text names the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

impl Fatal {
    pub fn new(context: &str, e: impl std::fmt::Display) -> Fatal {
        Fatal(format!("{context}: {e}"))
    }
}

/// The in-memory halves of the state machine. In production readers on other tasks share
/// them (the executor implements this with a lock); the core-only simulator owns them
/// outright ([`Owned`]). The core itself never blocks on them: it calls each closure once
/// and returns.
pub trait StateViews {
    fn mvcc<R>(&self, f: impl FnOnce(&Mvcc) -> R) -> R;
    fn mvcc_mut<R>(&self, f: impl FnOnce(&mut Mvcc) -> R) -> R;
    fn members<R>(&self, f: impl FnOnce(&Membership) -> R) -> R;
    fn members_mut<R>(&self, f: impl FnOnce(&mut Membership) -> R) -> R;
    fn leases<R>(&self, f: impl FnOnce(&Lessor) -> R) -> R;
    fn leases_mut<R>(&self, f: impl FnOnce(&mut Lessor) -> R) -> R;
    fn v2<R>(&self, f: impl FnOnce(&V2Store) -> R) -> R;
    fn v2_mut<R>(&self, f: impl FnOnce(&mut V2Store) -> R) -> R;
}

/// The in-memory halves as loaded from a data file ([`load_views`]).
#[derive(Debug)]
pub struct Loaded {
    pub mvcc: Mvcc,
    pub members: Membership,
    pub leases: Lessor,
    pub v2: V2Store,
}

/// [`StateViews`] owned by one thread (the core-only simulator, unit tests).
#[derive(Debug)]
pub struct Owned {
    pub mvcc: std::cell::RefCell<Mvcc>,
    pub members: std::cell::RefCell<Membership>,
    pub leases: std::cell::RefCell<Lessor>,
    pub v2: std::cell::RefCell<V2Store>,
}

impl Owned {
    pub fn new(loaded: Loaded) -> Owned {
        Owned {
            mvcc: loaded.mvcc.into(),
            members: loaded.members.into(),
            leases: loaded.leases.into(),
            v2: loaded.v2.into(),
        }
    }
}

impl StateViews for Owned {
    fn mvcc<R>(&self, f: impl FnOnce(&Mvcc) -> R) -> R {
        f(&self.mvcc.borrow())
    }
    fn mvcc_mut<R>(&self, f: impl FnOnce(&mut Mvcc) -> R) -> R {
        f(&mut self.mvcc.borrow_mut())
    }
    fn members<R>(&self, f: impl FnOnce(&Membership) -> R) -> R {
        f(&self.members.borrow())
    }
    fn members_mut<R>(&self, f: impl FnOnce(&mut Membership) -> R) -> R {
        f(&mut self.members.borrow_mut())
    }
    fn leases<R>(&self, f: impl FnOnce(&Lessor) -> R) -> R {
        f(&self.leases.borrow())
    }
    fn leases_mut<R>(&self, f: impl FnOnce(&mut Lessor) -> R) -> R {
        f(&mut self.leases.borrow_mut())
    }
    fn v2<R>(&self, f: impl FnOnce(&V2Store) -> R) -> R {
        f(&self.v2.borrow())
    }
    fn v2_mut<R>(&self, f: impl FnOnce(&mut V2Store) -> R) -> R {
        f(&mut self.v2.borrow_mut())
    }
}

/// A transaction holding applied effects through `applied`, to be committed durably by the
/// executor (off the raft driver), then reported with [`KvState::committed`].
pub struct PendingCommit {
    pub txn: redb::WriteTransaction,
    pub applied: u64,
}

impl std::fmt::Debug for PendingCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingCommit(applied {})", self.applied)
    }
}

/// What a snapshot of the state machine at `index` is made from (see
/// [`KvState::snapshot_source`]).
pub struct SnapshotSource {
    txn: redb::ReadTransaction,
    current_rev: i64,
    compact_rev: i64,
    members: Membership,
    leases: Lessor,
    /// The v2 store exported ([`v2_rows::export`]).
    v2: Vec<u8>,
    pub index: u64,
}

impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotSource(index {})", self.index)
    }
}

impl SnapshotSource {
    /// Writes the snapshot file ([`snapshot`]: the revisions, the members, then every MVCC
    /// row a frame at a time) to `out`, flushed but not synced; returns `out` and the file's
    /// `SnapshotRef` (what the raft snapshot carries). Reads the whole store: run it off the
    /// driver. A read or write failure is [`Fatal`].
    pub fn write_to<W: Write>(self, out: W) -> Result<(W, SnapshotRef), Fatal> {
        self.write_copy(out)
    }

    /// [`Self::write_to`] without giving the source up: every call writes the same bytes (one
    /// read transaction, one point in time), so a caller can measure the file before sending
    /// it.
    pub fn write_copy<W: Write>(&self, out: W) -> Result<(W, SnapshotRef), Fatal> {
        let mut head = SnapshotData {
            current_revision: self.current_rev,
            compact_revision: self.compact_rev,
            v2_store: self.v2.clone(),
            ..Default::default()
        };
        self.members.export(&mut head);
        self.leases.export(&mut head);
        let write_err = |e: std::io::Error| Fatal::new("writing the snapshot file", e);
        let mut w = SnapshotWriter::new(out, &head).map_err(write_err)?;
        Mvcc::export_rows(&self.txn, |k: &[u8], v: &[u8]| -> Result<(), Fatal> {
            w.push_row(k, v).map_err(write_err)
        })
        .map_err(|e| Fatal::new("exporting the key-value store", e))?;
        w.finish().map_err(write_err)
    }
}

impl SnapshotSource {
    /// The store revision this source is at.
    pub fn revision(&self) -> i64 {
        self.current_rev
    }

    /// detcd's Maintenance.Hash: the CRC-32C of this source's snapshot file ([`Self::write_copy`]
    /// into nothing), which covers the replicated state: every MVCC row (all kept revisions,
    /// tombstones included), the current and compacted revisions, the member table with the
    /// removed IDs, the alarms, the leases and the v2 store. Members that applied the same
    /// entries get the same hash; the raft log, hard state and applied index are not in it.
    /// Not comparable with etcd's Hash, a CRC over its bbolt buckets (mvcc/backend Hash).
    pub fn hash(&self) -> Result<u32, Fatal> {
        Ok(self.write_copy(std::io::sink())?.1.crc32c)
    }
}

impl From<MvccError> for Fatal {
    fn from(e: MvccError) -> Fatal {
        Fatal(e.to_string())
    }
}

/// The state machine over one data file.
pub struct KvState<V: StateViews> {
    db: Arc<redb::Database>,
    views: V,
    /// Last entry applied (in memory, in `open_txn` or committed).
    applied: u64,
    /// The applied index the data file holds durably: a restart replays the log from here.
    durable_applied: u64,
    /// Effects applied after the last commit was handed out.
    open_txn: Option<redb::WriteTransaction>,
    /// A commit handed out and not yet reported: redb allows one write transaction at a time.
    commit_in_flight: Option<u64>,
    /// Changes applied since the caller last took them ([`KvState::take_events`]).
    events: Vec<WatchEvent>,
    /// The store revision after the last snapshot install not yet reported to Watch: its
    /// changes came without events.
    replaced_at: Option<i64>,
    /// etcd's minimum lease TTL, seconds ([`crate::lease::min_lease_ttl`]).
    min_lease_ttl: i64,
}

/// `commit_in_flight` while a defragmentation holds the writer.
const DEFRAG_IN_FLIGHT: u64 = u64::MAX - 1;

/// Writes one META value in `txn`.
fn put_meta(txn: &redb::WriteTransaction, key: &str, value: &[u8]) -> Result<(), Fatal> {
    let mut t = txn
        .open_table(META)
        .map_err(|e| Fatal::new(&format!("storing {key}"), e))?;
    t.insert(key, value)
        .map_err(|e| Fatal::new(&format!("storing {key}"), e))?;
    Ok(())
}

/// The applied index a data file holds (0 for a new one).
pub fn read_applied(db: &redb::Database) -> Result<u64, LogError> {
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(t) => match t.get(meta_keys::APPLIED_INDEX)? {
            Some(v) => v
                .value()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| LogError::Corrupt("applied index is not 8 bytes".into())),
            None => Ok(0),
        },
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// How a brand-new member starts ([`initialize_member`]).
pub enum NewMember {
    /// A member of a new cluster: every member is a voter, known from the bootstrap.
    NewCluster,
    /// A member joining a running cluster, whose member list (and removed IDs) it fetched:
    /// its raft configuration and state come from the leader.
    Joining { removed: Vec<u64> },
}

/// Writes a brand-new member durably: the log file (empty), the member table, the cluster
/// and member IDs. `members` are the members as the bootstrap knows them.
pub fn initialize_member(
    db: &redb::Database,
    log_file: &mut dyn crate::wal::LogFile,
    cluster_id: u64,
    local_id: u64,
    members: Vec<crate::proto::detcdpb::MemberRecord>,
    how: NewMember,
) -> Result<crate::raft_log::RaftLog, LogError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| LogError::Storage(e.to_string()))?;
    let v2_index = match &how {
        NewMember::NewCluster => members.len() as u64 + 1,
        NewMember::Joining { .. } => 0,
    };
    let (cs, base, removed) = match how {
        NewMember::NewCluster => {
            let mut cs = ConfState::default();
            cs.voters = members.iter().map(|m| m.id).collect();
            (cs, (1, 1), Vec::new())
        }
        NewMember::Joining { removed } => (ConfState::default(), (0, 0), removed),
    };
    // etcd's v2 store counts each bootstrap member's raftAttributes and the cluster version
    // (see V2Store::count_member_change); a joining member takes the leader's.
    let log = crate::raft_log::RaftLog::bootstrap(&txn, cs, base, log_file)?;
    Membership::bootstrap(&txn, cluster_id, members, removed)?;
    if v2_index > 0 {
        txn.open_table(META)?
            .insert(meta_keys::V2_INDEX, v2_index.to_be_bytes().as_slice())?;
    }
    txn.open_table(META)?
        .insert(meta_keys::MEMBER_ID, local_id.to_be_bytes().as_slice())?;
    txn.open_table(crate::tables::KV)?;
    txn.commit()?;
    Ok(log)
}

/// [`initialize_member`] for a member of a new cluster; `members` are (id, peer URLs).
pub fn initialize_new_member(
    db: &redb::Database,
    log_file: &mut dyn crate::wal::LogFile,
    cluster_id: u64,
    local_id: u64,
    members: &[(u64, Vec<String>)],
) -> Result<crate::raft_log::RaftLog, LogError> {
    let records = members
        .iter()
        .map(|(id, urls)| crate::proto::detcdpb::MemberRecord {
            id: *id,
            peer_urls: urls.clone(),
            ..Default::default()
        })
        .collect();
    initialize_member(
        db,
        log_file,
        cluster_id,
        local_id,
        records,
        NewMember::NewCluster,
    )
}

/// What [`restore_saved_snapshot`] put in the data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The store revision of the snapshot.
    pub revision: i64,
    /// Keys that exist at that revision.
    pub keys: usize,
    pub leases: usize,
}

/// `detcd snapshot restore` (etcd's clientv3/snapshot Restore, saveDB): writes the content of
/// a client's saved snapshot (the file without its SHA-256 trailer;
/// [`snapshot::SnapshotReader::open_padded`]) into the data file of a member just
/// initialised for a new cluster ([`initialize_new_member`]): every MVCC row with the
/// revisions, the leases and the alarms. The member table and removed IDs stay the new
/// cluster's (etcd deletes the old members), and so does the v2 store (etcd's v3 snapshot
/// has none). One durable transaction: a damaged file ([`SnapshotFileError::Damaged`], named
/// in the error) leaves the data file as it was.
pub fn restore_saved_snapshot(db: &redb::Database, content: impl Read) -> Result<Restored, Fatal> {
    let damaged = |e: SnapshotFileError| Fatal::new("reading the snapshot", e);
    let (reader, head) = SnapshotReader::open_padded(content).map_err(damaged)?;
    let mut txn = db
        .begin_write()
        .map_err(|e| Fatal::new("beginning a write transaction", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| Fatal::new("setting durability", e))?;
    let rows = reader.rows().map(|r| r.map_err(damaged));
    let (mvcc, leased) = Mvcc::import_rows(&txn, &head, rows)?;
    let leases =
        Lessor::import(&txn, &head, leased).map_err(|e| Fatal::new("restoring the leases", e))?;
    crate::alarms::Alarms::import(&txn, &head)
        .map_err(|e| Fatal::new("restoring the alarms", e))?;
    txn.commit()
        .map_err(|e| Fatal::new("committing the restored data", e))?;
    Ok(Restored {
        revision: mvcc.current_revision(),
        keys: mvcc.live_keys(),
        leases: leases.len(),
    })
}

/// Loads the in-memory halves of the state machine from a data file.
pub fn load_views(db: &redb::Database) -> Result<Loaded, LogError> {
    let txn = db.begin_read()?;
    let (mvcc, leased) = Mvcc::open_leased(&txn).map_err(|e| LogError::Corrupt(e.to_string()))?;
    let members = Membership::load(&txn)?;
    let leases = Lessor::load(&txn, leased)?;
    let v2 = v2_rows::load(&txn)?;
    Ok(Loaded {
        mvcc,
        members,
        leases,
        v2,
    })
}

/// The lease IDs a write names in its puts (any branch of a txn), for the existence check at
/// apply.
fn named_leases(req: &Request, out: &mut Vec<i64>) {
    fn in_txn(t: &pb::TxnRequest, out: &mut Vec<i64>) {
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(pb::request_op::Request::RequestPut(p)) if p.lease != 0 => out.push(p.lease),
                Some(pb::request_op::Request::RequestTxn(t)) => in_txn(t, out),
                _ => {}
            }
        }
    }
    match req {
        Request::Put(p) if p.lease != 0 => out.push(p.lease),
        Request::Txn(t) => in_txn(t, out),
        _ => {}
    }
}

impl<V: StateViews> KvState<V> {
    /// The state machine over `db`, whose in-memory halves `views` were loaded from it
    /// ([`load_views`]) and which holds entries through `applied` durably.
    pub fn new(db: Arc<redb::Database>, views: V, applied: u64) -> KvState<V> {
        KvState {
            db,
            views,
            applied,
            durable_applied: applied,
            open_txn: None,
            commit_in_flight: None,
            events: Vec::new(),
            replaced_at: None,
            min_lease_ttl: crate::lease::min_lease_ttl(10, 100),
        }
    }

    /// Sets etcd's minimum lease TTL (seconds), from the member's timing.
    pub fn set_min_lease_ttl(&mut self, seconds: i64) {
        self.min_lease_ttl = seconds;
    }

    /// The changes applied since the last call, as watch events in revision order.
    pub fn take_events(&mut self) -> Vec<WatchEvent> {
        std::mem::take(&mut self.events)
    }

    /// The store revision a snapshot install jumped to since the last call, if one did: its
    /// changes have no events, so watchers must catch up from the store.
    pub fn take_replaced(&mut self) -> Option<i64> {
        self.replaced_at.take()
    }

    /// Moves the changes the MVCC store recorded into the event queue, attaching and
    /// detaching leased keys on the way.
    fn collect_events(&mut self) {
        let events = self.views.mvcc_mut(|m| m.take_events());
        if events.is_empty() {
            return;
        }
        self.views.leases_mut(|l| {
            for ev in &events {
                let kv = ev.kv.as_ref().expect("events carry their KeyValue");
                let lease = (ev.r#type == EventType::Put as i32).then_some(kv.lease);
                l.key_changed(&kv.key, lease);
            }
        });
        self.events.extend(events);
    }

    pub fn views(&self) -> &V {
        &self.views
    }

    pub fn db(&self) -> &Arc<redb::Database> {
        &self.db
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn durable_applied(&self) -> u64 {
        self.durable_applied
    }

    /// True while a handed-out commit has not been reported: nothing can be applied then.
    pub fn is_committing(&self) -> bool {
        self.commit_in_flight.is_some()
    }

    /// Rows applied and not yet durable (the caller bounds them by committing).
    pub fn uncommitted_rows(&self) -> usize {
        self.views.mvcc(|m| m.uncommitted_rows())
    }

    /// Opens a write transaction for applying if none is open.
    fn open_txn(&mut self) -> Result<(), Fatal> {
        assert!(
            self.commit_in_flight.is_none(),
            "apply while a commit is in flight (redb has one writer)"
        );
        if self.open_txn.is_none() {
            let txn = self
                .db
                .begin_write()
                .map_err(|e| Fatal::new("beginning a write transaction", e))?;
            self.open_txn = Some(txn);
        }
        Ok(())
    }

    /// Applies one committed request at `index`. `Ok(Err(..))` is the client's answer
    /// (the request was refused, nothing changed); `Err` stops the member.
    pub fn apply(
        &mut self,
        index: u64,
        req: &InternalRequest,
    ) -> Result<Result<Applied, MvccError>, Fatal> {
        debug_assert!(index > self.applied, "entry {index} applied twice");
        self.open_txn()?;
        let txn = self.open_txn.as_ref().unwrap();
        let mut named = Vec::new();
        if let Some(r) = &req.request {
            named_leases(r, &mut named);
        }
        let missing: Vec<i64> = self
            .views
            .leases(|l| named.into_iter().filter(|id| !l.contains(*id)).collect());
        let exists = |id: i64| !missing.contains(&id);
        // etcd's applierV3Capped: under a NOSPACE alarm nothing may grow the store.
        let capped = self
            .views
            .members(|m| m.alarms().is_active(pb::AlarmType::Nospace));
        let grows = match &req.request {
            Some(Request::Put(_)) | Some(Request::LeaseGrant(_)) => true,
            Some(Request::Txn(t)) => !crate::mvcc::is_txn_readonly(t),
            _ => false,
        };
        let result = match &req.request {
            _ if capped && grows => Err(MvccError::NoSpace),
            Some(Request::Put(r)) => self
                .views
                .mvcc_mut(|m| m.put_leased(txn, r, &exists))
                .map(Applied::Put),
            Some(Request::DeleteRange(r)) => self
                .views
                .mvcc_mut(|m| m.delete_range(txn, r))
                .map(Applied::DeleteRange),
            Some(Request::Txn(r)) => self
                .views
                .mvcc_mut(|m| m.txn_leased(txn, r, &exists))
                .map(Applied::Txn),
            Some(Request::LeaseGrant(r)) => {
                let min = self.min_lease_ttl;
                self.views
                    .leases_mut(|l| l.grant(txn, r.id, r.ttl, min))
                    .map_err(|e| Fatal::new("storing a lease", e))?
                    .map(|ttl| {
                        Applied::LeaseGrant(pb::LeaseGrantResponse {
                            header: None,
                            id: r.id,
                            ttl,
                            error: String::new(),
                        })
                    })
                    .map_err(MvccError::from)
            }
            Some(Request::LeaseRevoke(r)) => self.revoke(txn, r.id),
            Some(Request::LeaseCheckpoint(r)) => {
                let remaining: Vec<(i64, i64)> = r
                    .checkpoints
                    .iter()
                    .map(|c| (c.id, c.remaining_ttl))
                    .collect();
                self.views
                    .leases_mut(|l| l.checkpoint(txn, &remaining))
                    .map_err(|e| Fatal::new("storing a lease checkpoint", e))?;
                Ok(Applied::LeaseCheckpoint)
            }
            Some(Request::Compaction(r)) => self
                .views
                .mvcc_mut(|m| m.compact(txn, r.revision))
                .map(Applied::Compact),
            Some(Request::Alarm(r)) => self.alarm(txn, r),
            Some(Request::SetAttributes(a)) => {
                self.views
                    .members_mut(|m| m.set_attributes(txn, a))
                    .map_err(|e| Fatal::new("storing member attributes", e))?;
                // etcd writes /0/members/<id>/attributes into its v2 store.
                self.count_v2_member_writes(txn, 1)?;
                Ok(Applied::Attributes)
            }
            Some(Request::V2(r)) => {
                let answer = self.views.v2_mut(|s| s.apply(r));
                let changes = self
                    .views
                    .v2_mut(|s| s.has_changes().then(|| s.take_changes()));
                if let Some(ch) = changes {
                    v2_rows::write_changes(txn, ch).map_err(|e| {
                        Fatal::new(&format!("entry {index}: storing the v2 store"), e)
                    })?;
                }
                Ok(Applied::V2(Box::new(answer)))
            }
            Some(Request::MemberUpdate(_)) => {
                return Err(Fatal(format!(
                    "entry {index}: a membership change reached the key-value apply"
                )))
            }
            None => Ok(Applied::Attributes),
        };
        self.applied = index;
        match result {
            Err(e @ (MvccError::Storage(_) | MvccError::Corrupt(_))) => {
                Err(Fatal::new(&format!("applying entry {index}"), e))
            }
            other => {
                self.collect_events();
                Ok(other)
            }
        }
    }

    /// Moves the v2 store's index by `writes` of etcd's member bookkeeping
    /// ([`V2Store::count_member_change`]), durably with the apply.
    fn count_v2_member_writes(
        &self,
        txn: &redb::WriteTransaction,
        writes: u64,
    ) -> Result<(), Fatal> {
        let changes = self.views.v2_mut(|s| {
            s.count_member_change(writes);
            s.take_changes()
        });
        v2_rows::write_changes(txn, changes)
            .map_err(|e| Fatal::new("storing the v2 store index", e))
    }

    /// etcd's Alarm apply (etcdserver/apply.go): ACTIVATE raises, DEACTIVATE clears, each
    /// answering the alarm it changed; the first NOSPACE raised and the last cleared are
    /// logged as etcd logs them.
    fn alarm(
        &self,
        txn: &redb::WriteTransaction,
        r: &pb::AlarmRequest,
    ) -> Result<Applied, MvccError> {
        use pb::alarm_request::AlarmAction;
        let alarm = pb::AlarmType::try_from(r.alarm).unwrap_or(pb::AlarmType::None);
        let member = crate::ids::format_id(r.member_id);
        let changed = self.views.members_mut(|m| {
            let before = m.alarms().is_active(alarm);
            let changed = match AlarmAction::try_from(r.action) {
                Ok(AlarmAction::Activate) => m.alarms_mut().activate(txn, r.member_id, alarm)?,
                Ok(AlarmAction::Deactivate) => {
                    m.alarms_mut().deactivate(txn, r.member_id, alarm)?
                }
                _ => false,
            };
            let after = m.alarms().is_active(alarm);
            if !before && after {
                tracing::warn!(alarm = alarm.as_str_name(), from = %member, "alarm raised");
            } else if before && !after {
                tracing::info!(alarm = alarm.as_str_name(), from = %member, "alarm disarmed");
            }
            Ok::<bool, redb::Error>(changed)
        })?;
        let alarms = if changed {
            vec![pb::AlarmMember {
                member_id: r.member_id,
                alarm: alarm as i32,
            }]
        } else {
            Vec::new()
        };
        Ok(Applied::Alarm(pb::AlarmResponse {
            header: None,
            alarms,
        }))
    }

    /// etcd's LeaseRevoke apply: every key attached to the lease is deleted in one revision
    /// (one txn of deletes), then the lease goes. Error: the lease does not exist.
    fn revoke(&self, txn: &redb::WriteTransaction, id: i64) -> Result<Applied, MvccError> {
        let keys = self.views.leases(|l| l.keys_of(id))?;
        let mut header = None;
        if !keys.is_empty() {
            let deletes = pb::TxnRequest {
                success: keys
                    .into_iter()
                    .map(|key| pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestDeleteRange(
                            pb::DeleteRangeRequest {
                                key,
                                ..Default::default()
                            },
                        )),
                    })
                    .collect(),
                ..Default::default()
            };
            header = self.views.mvcc_mut(|m| m.txn(txn, &deletes))?.header;
        }
        self.views
            .leases_mut(|l| l.remove(txn, id))
            .map_err(|e| MvccError::Corrupt(format!("removing lease {id:x}: {e}")))?;
        Ok(Applied::LeaseRevoke(pb::LeaseRevokeResponse { header }))
    }

    /// An entry with no effect on the stores (an empty entry of a new leader).
    pub fn skip(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Applies a membership change at `index` (validated by the caller) and, for a raft
    /// configuration change, raft's new configuration `cs`, in one transaction: the member
    /// table and raft's ConfState never disagree in the data file.
    pub fn apply_member_change(
        &mut self,
        index: u64,
        change: &crate::membership::MemberChange,
        cs: Option<&ConfState>,
    ) -> Result<(), Fatal> {
        self.open_txn()?;
        let txn = self.open_txn.as_ref().unwrap();
        self.views
            .members_mut(|m| m.apply(txn, change))
            .map_err(|e| Fatal::new("storing a membership change", e))?;
        // etcd writes the member's raftAttributes in its v2 store; a removal deletes the
        // member and records it as removed (membership/store.go): two writes.
        let writes = match change {
            crate::membership::MemberChange::Remove(_) => 2,
            _ => 1,
        };
        self.count_v2_member_writes(txn, writes)?;
        if let Some(cs) = cs {
            let mut bytes = Vec::new();
            crate::raftpb::encode_conf_state(cs, &mut bytes);
            put_meta(txn, meta_keys::CONF_STATE, &bytes)?;
        }
        self.applied = index;
        Ok(())
    }

    /// Stores raft's configuration after a conf change entry at `index`.
    pub fn apply_conf_state(&mut self, index: u64, cs: &ConfState) -> Result<(), Fatal> {
        let mut bytes = Vec::new();
        crate::raftpb::encode_conf_state(cs, &mut bytes);
        self.open_txn()?;
        put_meta(
            self.open_txn.as_ref().unwrap(),
            meta_keys::CONF_STATE,
            &bytes,
        )?;
        self.applied = index;
        Ok(())
    }

    /// Hands out everything applied since the last commit, with the applied index written
    /// into it, to be committed durably off the driver. None if nothing is new.
    pub fn take_commit(&mut self) -> Result<Option<PendingCommit>, Fatal> {
        if self.commit_in_flight.is_some()
            || (self.applied == self.durable_applied && self.open_txn.is_none())
        {
            return Ok(None);
        }
        let applied = self.applied;
        let mut txn = match self.open_txn.take() {
            Some(t) => t,
            None => self
                .db
                .begin_write()
                .map_err(|e| Fatal::new("beginning a write transaction", e))?,
        };
        txn.set_durability(Durability::Immediate)
            .map_err(|e| Fatal::new("setting durability", e))?;
        put_meta(&txn, meta_keys::APPLIED_INDEX, &applied.to_be_bytes())?;
        self.commit_in_flight = Some(applied);
        Ok(Some(PendingCommit { txn, applied }))
    }

    /// The commit handed out for `applied` is durable: reads find its rows in the tables.
    pub fn committed(&mut self, applied: u64) {
        assert_eq!(
            self.commit_in_flight.take(),
            Some(applied),
            "a commit was reported that was not handed out"
        );
        self.views.mvcc_mut(|m| m.committed());
        self.durable_applied = applied;
    }

    /// Whether applied effects wait in an open transaction (a commit must precede a
    /// defragmentation).
    pub fn has_open_txn(&self) -> bool {
        self.open_txn.is_some()
    }

    /// Starts a defragmentation of the data file: everything applied is durable, and nothing
    /// is applied until [`Self::finish_defragment`] (redb's one writer is the copy's now).
    /// Returns the data file to copy; reads of it go on meanwhile.
    pub fn begin_defragment(&mut self) -> Arc<redb::Database> {
        assert!(
            self.open_txn.is_none() && self.commit_in_flight.is_none(),
            "defragmentation with uncommitted effects"
        );
        self.commit_in_flight = Some(DEFRAG_IN_FLIGHT);
        self.db.clone()
    }

    /// The defragmentation begun by [`Self::begin_defragment`] ended: with `Some`, the
    /// compact copy (same contents) replaces the data file from now on.
    pub fn finish_defragment(&mut self, copy: Option<Arc<redb::Database>>) {
        assert_eq!(
            self.commit_in_flight.take(),
            Some(DEFRAG_IN_FLIGHT),
            "no defragmentation in flight"
        );
        if let Some(db) = copy {
            self.db = db;
        }
    }

    /// A consistent view of the state machine at the applied index, for a snapshot: a redb
    /// read transaction and the in-memory values that go with it. Cheap to take; encoding it
    /// ([`SnapshotSource::write_to`]) reads the whole store and runs off the driver, while
    /// applying goes on (redb's read transaction keeps seeing this point). Must be called
    /// with nothing uncommitted (after [`Self::committed`]).
    pub fn snapshot_source(&self) -> Result<SnapshotSource, Fatal> {
        assert!(
            self.open_txn.is_none() && self.commit_in_flight.is_none(),
            "snapshot of a state machine with uncommitted effects"
        );
        let txn = self
            .db
            .begin_read()
            .map_err(|e| Fatal::new("reading for a snapshot", e))?;
        let (current_rev, compact_rev) = self
            .views
            .mvcc(|m| (m.current_revision(), m.compact_revision()));
        Ok(SnapshotSource {
            txn,
            current_rev,
            compact_rev,
            members: self.views.members(|m| m.clone()),
            leases: self.views.leases(|l| l.clone()),
            v2: self.views.v2(v2_rows::export),
            index: self.applied,
        })
    }

    /// Starts replacing the state machine with a snapshot from the leader: whatever is open
    /// is discarded (the snapshot is newer than all of it), and the returned work writes the
    /// snapshot durably, off the driver ([`SnapshotInstall::run`]); then
    /// [`Self::finish_install`]. Nothing may be applied or committed in between.
    pub fn begin_install(&mut self, snap: Snapshot) -> SnapshotInstall {
        assert!(self.commit_in_flight.is_none(), "install during a commit");
        self.open_txn = None;
        self.commit_in_flight = Some(u64::MAX); // redb's one writer is the install's now
        SnapshotInstall {
            db: self.db.clone(),
            snap,
        }
    }

    /// The install begun by [`Self::begin_install`] is durable: the views become the
    /// snapshot's, and the applied index its index.
    pub fn finish_install(&mut self, installed: Installed) {
        assert_eq!(
            self.commit_in_flight.take(),
            Some(u64::MAX),
            "no install in flight"
        );
        let Installed {
            index,
            mvcc,
            members,
            mut leases,
            v2,
        } = installed;
        let revision = mvcc.current_revision();
        self.views.mvcc_mut(|m| {
            let counts = m.op_counts();
            *m = mvcc;
            m.keep_op_counts(counts);
        });
        self.views.members_mut(|m| *m = members);
        self.views.leases_mut(|l| {
            leases.keep_clock_of(l);
            *l = leases
        });
        self.views.v2_mut(|s| s.replace_with(v2));
        self.applied = index;
        self.durable_applied = index;
        self.replaced_at = Some(revision);
    }
}

/// A snapshot from the leader to write into the data file (see [`KvState::begin_install`]).
pub struct SnapshotInstall {
    db: Arc<redb::Database>,
    pub snap: Snapshot,
}

impl std::fmt::Debug for SnapshotInstall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SnapshotInstall(index {})",
            self.snap.get_metadata().index
        )
    }
}

/// A reader that checksums what passes through it.
struct Checked<'a, R> {
    inner: R,
    check: &'a mut FileCheck,
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check.update(&buf[..n]);
        Ok(n)
    }
}

/// The state a snapshot installed: what [`KvState::finish_install`] takes.
#[derive(Debug)]
pub struct Installed {
    pub index: u64,
    mvcc: Mvcc,
    members: Membership,
    leases: Lessor,
    v2: V2Store,
}

/// Rows of a snapshot being installed are committed in batches of about this many bytes
/// (see [`Mvcc::stage_rows`]): a few milliseconds of flushing on this machine's disk.
pub const INSTALL_COMMIT_BYTES: usize = 4 << 20;

/// Why staging a snapshot's rows stopped: the file or the data file.
enum InstallError {
    Damaged(SnapshotFileError),
    Mvcc(MvccError),
}

impl From<MvccError> for InstallError {
    fn from(e: MvccError) -> Self {
        InstallError::Mvcc(e)
    }
}

impl SnapshotInstall {
    /// Which snapshot file this install reads (raft's snapshot data), or why the leader's
    /// data is not one.
    pub fn file_ref(&self) -> Result<SnapshotRef, Fatal> {
        SnapshotRef::decode(self.snap.get_data())
            .map_err(|e| Fatal::new("a snapshot from the leader names no snapshot file", e))
    }

    /// Replaces the tables with the snapshot file's (read from `file` a frame at a time),
    /// durably (the raft log may drop entries once this returns), and rebuilds the in-memory
    /// state from them. Reads and writes every row: run it off the driver. The rows are
    /// staged in commits of [`INSTALL_COMMIT_BYTES`] and swapped in by the last commit, so a
    /// damaged file ([`Fatal`]) or a crash leaves the tables as they were.
    pub fn run(self, file: impl Read) -> Result<Installed, Fatal> {
        self.run_observed(file, |_| {})
    }

    /// [`Self::run`], calling `rows_staged` with the number of rows once they are all staged
    /// and only the last commit is left (the executor logs how long each half took).
    pub fn run_observed(
        self,
        file: impl Read,
        rows_staged: impl FnOnce(u64),
    ) -> Result<Installed, Fatal> {
        let snap = &self.snap;
        let index = snap.get_metadata().index;
        let want = self.file_ref()?;
        let damaged = |e: SnapshotFileError| Fatal::new("installing the snapshot file", e);
        let mut check = FileCheck::default();
        let (reader, head) = SnapshotReader::open(Checked {
            inner: file,
            check: &mut check,
        })
        .map_err(damaged)?;
        // The rows first, staged in bounded commits; then everything else in one commit.
        let rows = reader.rows().map(|r| r.map_err(InstallError::Damaged));
        let staged =
            Mvcc::stage_rows(&self.db, rows, INSTALL_COMMIT_BYTES).map_err(|e| match e {
                InstallError::Damaged(e) => damaged(e),
                InstallError::Mvcc(e) => Fatal(format!("installing snapshot: {e}")),
            })?;
        // The reader read to the end: the bytes must be the file raft's snapshot names.
        if !check.matches(&want) {
            return Err(Fatal(format!(
                "snapshot file {index} is not the one the leader sent ({} bytes, crc32c {:08x}; \
                 want {} bytes, crc32c {:08x})",
                check.size, check.crc32c, want.size, want.crc32c
            )));
        }
        rows_staged(staged);
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| Fatal::new("beginning a write transaction", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| Fatal::new("setting durability", e))?;
        let (mvcc, leased) = Mvcc::import_staged(&txn, &head, staged)
            .map_err(|e| Fatal(format!("installing snapshot: {e}")))?;
        let members = Membership::import(&txn, &head)
            .map_err(|e| Fatal::new("installing snapshot members", e))?;
        let leases = Lessor::import(&txn, &head, leased)
            .map_err(|e| Fatal::new("installing snapshot leases", e))?;
        let exported = v2_rows::decode(&head.v2_store).map_err(|e| Fatal::new("installing", e))?;
        v2_rows::replace(&txn, &exported)
            .map_err(|e| Fatal::new("installing the snapshot's v2 store", e))?;
        let v2 = V2Store::load(exported.index, exported.nodes, exported.events)
            .map_err(|e| Fatal::new("installing the snapshot's v2 store", e))?;
        crate::raft_log::write_snapshot_meta(&txn, snap)
            .map_err(|e| Fatal::new("storing snapshot metadata", e))?;
        put_meta(&txn, meta_keys::APPLIED_INDEX, &index.to_be_bytes())?;
        txn.commit()
            .map_err(|e| Fatal::new("committing the snapshot", e))?;
        Ok(Installed {
            index,
            mvcc,
            members,
            leases,
            v2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::wal::MemFile;
    use redb::ReadableTable;

    fn put(value: &str) -> InternalRequest {
        InternalRequest {
            id: 1,
            request: Some(Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })),
            header: None,
        }
    }

    fn new_state() -> KvState<Owned> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        initialize_new_member(&db, &mut MemFile::default(), 7, 1, &[(1, vec![])]).unwrap();
        let views = Owned::new(load_views(&db).unwrap());
        KvState::new(Arc::new(db), views, 0)
    }

    fn commit(s: &mut KvState<Owned>) {
        let c = s.take_commit().unwrap().unwrap();
        c.txn.commit().unwrap();
        s.committed(c.applied);
    }

    #[test]
    fn a_refused_request_is_the_clients_answer() {
        let mut s = new_state();
        let req = InternalRequest {
            id: 1,
            request: Some(Request::Put(PutRequest {
                key: b"absent".to_vec(),
                ignore_value: true,
                ..Default::default()
            })),
            header: None,
        };
        assert!(matches!(s.apply(1, &req), Ok(Err(MvccError::KeyNotFound))));
        assert_eq!(s.applied(), 1);
    }

    /// Regression: a storage failure during apply used to reach the client as an error while
    /// the member went on; it must stop the member, naming the entry and the cause.
    #[test]
    fn a_damaged_row_met_during_apply_stops_the_member() {
        let mut s = new_state();
        assert!(matches!(s.apply(1, &put("v1")), Ok(Ok(Applied::Put(_)))));
        commit(&mut s);
        {
            let txn = s.db().begin_write().unwrap();
            {
                let mut kv = txn.open_table(crate::tables::KV).unwrap();
                let keys: Vec<Vec<u8>> = kv
                    .iter()
                    .unwrap()
                    .map(|r| r.unwrap().0.value().to_vec())
                    .collect();
                for k in keys {
                    kv.insert(k.as_slice(), [0xff, 0xff, 0xff].as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        match s.apply(2, &put("v2")) {
            Err(Fatal(msg)) => assert!(msg.contains("applying entry 2"), "{msg}"),
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }

    #[test]
    fn the_applied_index_is_durable_only_after_the_commit_is_reported() {
        let mut s = new_state();
        s.apply(1, &put("v1")).unwrap().unwrap();
        assert_eq!(read_applied(s.db()).unwrap(), 0);
        let c = s.take_commit().unwrap().unwrap();
        assert!(s.is_committing());
        assert!(
            s.take_commit().unwrap().is_none(),
            "one commit in flight at a time"
        );
        c.txn.commit().unwrap();
        s.committed(1);
        assert_eq!(read_applied(s.db()).unwrap(), 1);
        assert_eq!(s.durable_applied(), 1);
    }

    fn v2_put(path: &str, value: &str) -> InternalRequest {
        InternalRequest {
            id: 1,
            request: Some(Request::V2(crate::proto::detcdpb::V2Request {
                method: "PUT".into(),
                path: path.into(),
                value: value.into(),
                ..Default::default()
            })),
            header: None,
        }
    }

    /// The v2 store is durable with the applied index (a restart loads it from the data
    /// file) and travels in snapshots; a damaged row is refused, naming it.
    #[test]
    fn the_v2_store_survives_restarts_and_snapshots() {
        let mut leader = new_state();
        let answer = leader.apply(1, &v2_put("/tok/_config/size", "3")).unwrap();
        assert!(matches!(answer, Ok(Applied::V2(ref a)) if a.is_ok()));
        leader
            .apply(2, &v2_put("/tok/abc", "n=u"))
            .unwrap()
            .unwrap();
        commit(&mut leader);
        let reloaded = load_views(leader.db()).unwrap().v2;
        // Bootstrap counted etcd's bookkeeping (one member's raftAttributes, the version).
        assert_eq!(reloaded.index(), 4);
        assert_eq!(
            reloaded
                .get("/tok/abc", false, 0)
                .unwrap()
                .node
                .value
                .as_deref(),
            Some("n=u")
        );
        let (bytes, file) = leader
            .snapshot_source()
            .unwrap()
            .write_to(Vec::new())
            .unwrap();
        let mut snap = Snapshot::default();
        snap.set_data(file.encode_to_vec().into());
        snap.mut_metadata().index = 2;
        snap.mut_metadata().term = 1;
        let mut follower = new_state();
        follower.apply(1, &v2_put("/old", "x")).unwrap().unwrap();
        commit(&mut follower);
        let installed = follower.begin_install(snap).run(bytes.as_slice()).unwrap();
        follower.finish_install(installed);
        let v2 = load_views(follower.db()).unwrap().v2;
        assert!(
            v2.get("/old", false, 0).is_err(),
            "the snapshot replaced the store"
        );
        assert_eq!(
            v2.get("/tok/_config/size", false, 0)
                .unwrap()
                .node
                .value
                .as_deref(),
            Some("3")
        );
        assert_eq!(follower.views().v2(|s| s.index()), 4);
        // Damage is refused with the row named.
        {
            let txn = leader.db().begin_write().unwrap();
            txn.open_table(crate::tables::V2_NODES)
                .unwrap()
                .insert("/tok/abc", b"{not json".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        match load_views(leader.db()) {
            Err(LogError::Corrupt(m)) => assert!(m.contains("/tok/abc"), "{m}"),
            other => panic!("damaged row accepted: {:?}", other.map(|_| ())),
        }
    }

    /// A snapshot file built from one state machine installs into another (replacing what
    /// it held); a file other than the one the leader's snapshot names is refused, and then
    /// nothing of it is committed.
    #[test]
    fn a_snapshot_file_installs_only_when_it_is_the_one_named() {
        let mut leader = new_state();
        for i in 1..=3 {
            leader.apply(i, &put(&format!("v{i}"))).unwrap().unwrap();
        }
        commit(&mut leader);
        let (bytes, file) = leader
            .snapshot_source()
            .unwrap()
            .write_to(Vec::new())
            .unwrap();
        let snap = |file: &SnapshotRef| {
            let mut s = Snapshot::default();
            s.set_data(file.encode_to_vec().into());
            s.mut_metadata().index = 3;
            s.mut_metadata().term = 1;
            s
        };
        let value = |s: &KvState<Owned>| {
            let txn = s.db().begin_read().unwrap();
            let req = pb::RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            };
            let r = s.views().mvcc(|m| m.range_in(&txn, &req)).unwrap();
            r.kvs.first().map(|kv| kv.value.clone())
        };

        let mut follower = new_state();
        follower.apply(1, &put("old")).unwrap().unwrap();
        commit(&mut follower);
        let wrong = SnapshotRef {
            crc32c: file.crc32c ^ 1,
            ..file
        };
        let install = follower.begin_install(snap(&wrong));
        match install.run(bytes.as_slice()) {
            Err(Fatal(msg)) => assert!(msg.contains("not the one the leader sent"), "{msg}"),
            other => panic!("a mismatching file was installed: {other:?}"),
        }
        assert_eq!(value(&follower).as_deref(), Some(b"old".as_slice()));

        // (A refused install stops the member; a staging table it left is dropped by the
        // next install: mvcc's staged_import_matches_the_one_transaction_import.)
        let mut follower = new_state();
        let install = follower.begin_install(snap(&file));
        let installed = install.run(bytes.as_slice()).unwrap();
        follower.finish_install(installed);
        assert_eq!(follower.applied(), 3);
        assert_eq!(value(&follower).as_deref(), Some(b"v3".as_slice()));
        assert_eq!(read_applied(follower.db()).unwrap(), 3);
        let txn = follower.db().begin_read().unwrap();
        assert!(
            matches!(
                txn.open_table(crate::tables::KV_INSTALL),
                Err(redb::TableError::TableDoesNotExist(_))
            ),
            "the staging table became the KV table"
        );
    }
}
