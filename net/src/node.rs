//! The raft driver: one task that owns the raft-rs `RawNode`, feeds it ticks, peer messages,
//! proposals and read requests, and carries out each `Ready` in raft-rs's documented order.
//!
//! Durability, etcd's way: a Ready's entries and hard state are appended to the raft log file
//! with one fsync, whatever the Ready's size. Applied effects go into one open redb write
//! transaction (readers see them at once through the MVCC store's uncommitted rows), committed
//! durably every heartbeat, every `MAX_UNCOMMITTED_ROWS` rows and before the log drops entries,
//! as etcd's backend commits its batch; a restart replays the log from the committed applied
//! index. Responses go to clients only after the entries they answer are committed by raft
//! and applied.

use crate::errors::ApiError;
use crate::transport::{PeerEvent, Transport};
use detcd_core::membership::Membership;
use detcd_core::mvcc::{Mvcc, MvccError};
use detcd_core::proto::detcdpb::{self, internal_request::Request, InternalRequest, SnapshotData};
use detcd_core::proto::etcdserverpb as pb;
use detcd_core::raft_log::{LogError, RaftLog};
use detcd_core::tables::{meta_keys, META};
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::*;
use raft::{RawNode, StateRole};
use redb::{Durability, ReadableDatabase};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Entries kept in the log behind a snapshot, so a briefly slow follower catches up from the
/// log instead of a whole snapshot (etcd's snapshotCatchUpEntries).
const CATCH_UP_ENTRIES: u64 = 5000;
/// Snapshots installed from a leader by any member of this process (the simulator checks that
/// its snapshot scenario really exercised the path).
pub static SNAPSHOTS_INSTALLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Limits on the driver's queues: a full queue pushes back on clients instead of growing.
pub const PROPOSAL_QUEUE: usize = 4096;
pub const READ_QUEUE: usize = 4096;
pub const INBOUND_QUEUE: usize = 4096;
/// At most this many queued inputs are folded into one Ready.
const MAX_BATCH: usize = 512;
/// Proposals held while no leader is known.
const MAX_WAITING_FOR_LEADER: usize = 4096;
/// Applied rows held in the open write transaction (and in memory) before it is committed
/// ahead of the next heartbeat (etcd's backend batch limit).
const MAX_UNCOMMITTED_ROWS: usize = 10_000;

/// What applying one request produced.
#[derive(Debug)]
pub enum Applied {
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    Attributes,
}

pub type ApplyResult = Result<Applied, ApiError>;

pub struct Proposal {
    pub request: InternalRequest,
    pub respond: oneshot::Sender<ApplyResult>,
}

/// Raft and apply progress as last seen by the driver; read by the API for headers and status.
#[derive(Clone, Copy, Debug, Default)]
pub struct RaftStatus {
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub is_leader: bool,
}

/// State shared between the driver and the client API.
pub struct Shared {
    pub member_id: u64,
    pub cluster_id: u64,
    pub db: Arc<redb::Database>,
    /// Index and KV history. Held for writing only while a Ready's effects are applied and
    /// committed, so a reader never sees an index entry whose row is not yet visible.
    pub mvcc: RwLock<Mvcc>,
    pub members: RwLock<Membership>,
    pub status: Mutex<RaftStatus>,
    /// True once this member has had a leader or restarted from its own log: from then on a
    /// peer from another cluster is refused, not a reason to exit.
    pub joined: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn status(&self) -> RaftStatus {
        *self.status.lock().unwrap()
    }

    /// A response header at the current revision.
    pub fn header(&self) -> pb::ResponseHeader {
        let revision = self.mvcc.read().unwrap().current_revision();
        self.header_at(revision)
    }

    /// A response header at a revision the caller already knows (a write's own revision):
    /// no wait for the MVCC lock, which the driver holds while it applies.
    pub fn header_at(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.status().term,
        }
    }
}

/// The handle the API uses to reach the driver.
#[derive(Clone)]
pub struct NodeHandle {
    pub shared: Arc<Shared>,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<oneshot::Sender<()>>,
    ids: Arc<Mutex<IdGen>>,
}

impl NodeHandle {
    /// Sends a write through raft and waits for its applied result.
    pub async fn propose(&self, request: Request, timeout: Duration) -> Result<Applied, ApiError> {
        let id = self.ids.lock().unwrap().next();
        let (tx, rx) = oneshot::channel();
        let p = Proposal {
            request: InternalRequest {
                id,
                request: Some(request),
            },
            respond: tx,
        };
        self.proposals
            .send(p)
            .await
            .map_err(|_| ApiError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(self.timeout_error()),
        }
    }

    /// Waits until this member has applied everything committed when the call began
    /// (ReadIndex), so a following local read is linearizable.
    pub async fn read_barrier(&self, timeout: Duration) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.reads.send(tx).await.map_err(|_| ApiError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(self.timeout_error()),
        }
    }

    fn timeout_error(&self) -> ApiError {
        if self.shared.status().leader == 0 {
            ApiError::NoLeader
        } else {
            ApiError::Timeout
        }
    }
}

/// Request IDs unique across members and restarts, as etcd's idutil: the member's low 16 bits,
/// then a counter that starts at the start time in milliseconds.
pub struct IdGen {
    prefix: u64,
    counter: u64,
}

impl IdGen {
    pub fn new(member_id: u64, start_unix_ms: u64) -> IdGen {
        IdGen {
            prefix: (member_id & 0xffff) << 48,
            counter: (start_unix_ms & 0xff_ffff_ffff) << 8,
        }
    }

    pub fn next(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        self.prefix | (self.counter & 0xffff_ffff_ffff)
    }
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Storage(#[from] LogError),
    #[error("{0}")]
    Raft(#[from] raft::Error),
    #[error("{0}")]
    Fatal(String),
}

impl From<redb::CommitError> for NodeError {
    fn from(e: redb::CommitError) -> Self {
        NodeError::Storage(LogError::Storage(format!("commit failed, stopping: {e}")))
    }
}
impl From<redb::TransactionError> for NodeError {
    fn from(e: redb::TransactionError) -> Self {
        NodeError::Storage(e.into())
    }
}
impl From<redb::StorageError> for NodeError {
    fn from(e: redb::StorageError) -> Self {
        NodeError::Storage(e.into())
    }
}
impl From<redb::TableError> for NodeError {
    fn from(e: redb::TableError) -> Self {
        NodeError::Storage(e.into())
    }
}
impl From<MvccError> for NodeError {
    fn from(e: MvccError) -> Self {
        NodeError::Storage(LogError::Corrupt(e.to_string()))
    }
}

pub struct NodeParams {
    pub member_id: u64,
    pub cluster_id: u64,
    pub heartbeat: Duration,
    /// Election timeout in heartbeat ticks.
    pub election_ticks: usize,
    pub snapshot_count: u64,
    pub start_unix_ms: u64,
    /// The attributes this member publishes once it has a leader.
    pub attributes: detcdpb::MemberAttributes,
}

/// The driver's own state.
pub struct Node {
    raw: RawNode<RaftLog>,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<oneshot::Sender<()>>,
    inbound: mpsc::Receiver<Message>,
    peer_events: mpsc::Receiver<PeerEvent>,
    waiters: BTreeMap<u64, oneshot::Sender<ApplyResult>>,
    waiting_for_leader: VecDeque<Proposal>,
    /// Reads not yet sent to raft, and those waiting for their read index.
    pending_reads: Vec<oneshot::Sender<()>>,
    read_batches: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    /// Read batches whose index is known, waiting for apply to reach it.
    ready_reads: Vec<(u64, Vec<oneshot::Sender<()>>)>,
    next_read_ctx: u64,
    applied: u64,
    /// The applied index the data file holds durably (the log replays from there).
    durable_applied: u64,
    /// The write transaction holding what was applied after `durable_applied`.
    open_txn: Option<redb::WriteTransaction>,
    last_snapshot_index: u64,
    snapshot_count: u64,
    attributes: detcdpb::MemberAttributes,
    attributes_published: bool,
    ticks_since_publish: usize,
    election_ticks: usize,
    heartbeat: Duration,
    ids: Arc<Mutex<IdGen>>,
}

/// The channels the transport and API need to reach the driver.
pub struct NodeInputs {
    pub inbound: mpsc::Sender<Message>,
    pub peer_events: mpsc::Sender<PeerEvent>,
}

impl Node {
    pub fn new(
        params: NodeParams,
        log: RaftLog,
        db: Arc<redb::Database>,
        transport: Arc<Transport>,
        peer_events: (mpsc::Sender<PeerEvent>, mpsc::Receiver<PeerEvent>),
        restarted: bool,
    ) -> Result<(Node, NodeHandle, NodeInputs), NodeError> {
        let (mvcc, members, applied) = {
            let txn = db.begin_read()?;
            let mvcc = Mvcc::open(&txn)?;
            let members = Membership::load(&txn)?;
            let applied = read_applied(&txn)?;
            (mvcc, members, applied)
        };
        let applied = applied.max(log.compacted_index());
        let mut log = log;
        if restarted && crate::mutation::active("forget-hardstate") {
            log.forget_term_and_vote();
        }
        let cfg = raft::Config {
            id: params.member_id,
            election_tick: params.election_ticks,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        cfg.validate()?;
        let raw = RawNode::new(&cfg, log, &detcd_core::raft_logger::raft_logger())?;
        let shared = Arc::new(Shared {
            member_id: params.member_id,
            cluster_id: params.cluster_id,
            db,
            mvcc: RwLock::new(mvcc),
            members: RwLock::new(members),
            status: Mutex::new(RaftStatus {
                applied,
                ..Default::default()
            }),
            joined: std::sync::atomic::AtomicBool::new(restarted),
        });
        let (ptx, prx) = mpsc::channel(PROPOSAL_QUEUE);
        let (rtx, rrx) = mpsc::channel(READ_QUEUE);
        let (itx, irx) = mpsc::channel(INBOUND_QUEUE);
        let ids = Arc::new(Mutex::new(IdGen::new(
            params.member_id,
            params.start_unix_ms,
        )));
        let node = Node {
            raw,
            shared: shared.clone(),
            transport,
            proposals: prx,
            reads: rrx,
            inbound: irx,
            peer_events: peer_events.1,
            waiters: BTreeMap::new(),
            waiting_for_leader: VecDeque::new(),
            pending_reads: Vec::new(),
            read_batches: BTreeMap::new(),
            ready_reads: Vec::new(),
            next_read_ctx: 1,
            applied,
            durable_applied: applied,
            open_txn: None,
            last_snapshot_index: applied,
            snapshot_count: params.snapshot_count.max(1),
            attributes: params.attributes,
            attributes_published: false,
            ticks_since_publish: 0,
            election_ticks: params.election_ticks,
            heartbeat: params.heartbeat,
            ids: ids.clone(),
        };
        let handle = NodeHandle {
            shared,
            proposals: ptx,
            reads: rtx,
            ids,
        };
        let inputs = NodeInputs {
            inbound: itx,
            peer_events: peer_events.0,
        };
        Ok((node, handle, inputs))
    }

    /// Runs until a fatal error (failed fsync, conflicting cluster ID during bootstrap).
    pub async fn run(mut self) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(ev) = self.peer_events.recv() => self.handle_peer_event(ev)?,
                Some(m) = self.inbound.recv() => {
                    self.step(m);
                    for _ in 0..MAX_BATCH {
                        match self.inbound.try_recv() {
                            Ok(m) => self.step(m),
                            Err(_) => break,
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.tick();
                    self.persist_applied()?;
                }
                Some(p) = self.proposals.recv() => {
                    self.handle_proposal(p);
                    for _ in 0..MAX_BATCH {
                        match self.proposals.try_recv() {
                            Ok(p) => self.handle_proposal(p),
                            Err(_) => break,
                        }
                    }
                }
                Some(r) = self.reads.recv() => {
                    self.pending_reads.push(r);
                    for _ in 0..MAX_BATCH {
                        match self.reads.try_recv() {
                            Ok(r) => self.pending_reads.push(r),
                            Err(_) => break,
                        }
                    }
                }
                else => return Ok(()),
            }
            self.flush_waiting();
            if self.raw.has_ready() {
                self.handle_ready().await?;
            }
            if self.raw.store().take_snapshot_wanted()
                || self.applied >= self.last_snapshot_index + self.snapshot_count
            {
                self.snapshot_and_compact()?;
            }
        }
    }

    fn step(&mut self, m: Message) {
        // Messages come from verified peers; raft rejects stale or odd ones itself.
        if let Err(e) = self.raw.step(m) {
            tracing::debug!("raft step: {e}");
        }
    }

    fn tick(&mut self) {
        self.raw.tick();
        self.ticks_since_publish += 1;
        if !self.attributes_published
            && self.raw.raft.leader_id != 0
            && self.ticks_since_publish >= self.election_ticks
        {
            self.ticks_since_publish = 0;
            self.publish_attributes();
        }
    }

    fn publish_attributes(&mut self) {
        let published = self
            .shared
            .members
            .read()
            .unwrap()
            .get(self.shared.member_id)
            .map(|m| m.name == self.attributes.name && m.client_urls == self.attributes.client_urls)
            .unwrap_or(false);
        if published {
            self.attributes_published = true;
            return;
        }
        let id = self.ids.lock().unwrap().next();
        let req = InternalRequest {
            id,
            request: Some(Request::SetAttributes(self.attributes.clone())),
        };
        // Fire and forget: retried every election timeout until the member list shows it.
        let _ = self.raw.propose(vec![], req.encode_to_vec());
    }

    fn handle_peer_event(&mut self, ev: PeerEvent) -> Result<(), NodeError> {
        match ev {
            PeerEvent::Unreachable(id) => self.raw.report_unreachable(id),
            PeerEvent::Snapshot(id, ok) => self.raw.report_snapshot(
                id,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
            PeerEvent::Fatal(msg) => return Err(NodeError::Fatal(msg)),
        }
        Ok(())
    }

    fn handle_proposal(&mut self, p: Proposal) {
        if p.respond.is_closed() {
            return;
        }
        if self.raw.raft.leader_id == 0 {
            if self.waiting_for_leader.len() < MAX_WAITING_FOR_LEADER {
                self.waiting_for_leader.push_back(p);
            }
            // Over the limit the sender is dropped and the client sees the server stopped
            // answering this request; its timeout names the missing leader.
            return;
        }
        let id = p.request.id;
        match self.raw.propose(vec![], p.request.encode_to_vec()) {
            Ok(()) => {
                self.waiters.insert(id, p.respond);
            }
            Err(_) => {
                if self.waiting_for_leader.len() < MAX_WAITING_FOR_LEADER {
                    self.waiting_for_leader.push_back(p);
                }
            }
        }
    }

    /// Proposals and reads held while there was no leader go out once there is one.
    fn flush_waiting(&mut self) {
        if self.raw.raft.leader_id == 0 {
            return;
        }
        let held: Vec<Proposal> = self.waiting_for_leader.drain(..).collect();
        for p in held {
            self.handle_proposal(p);
        }
        if !self.pending_reads.is_empty() {
            let ctx = self.next_read_ctx;
            self.next_read_ctx += 1;
            // The leader keys pending reads by context: make it unique across members.
            let mut rctx = self.shared.member_id.to_be_bytes().to_vec();
            rctx.extend_from_slice(&ctx.to_be_bytes());
            self.raw.read_index(rctx);
            self.read_batches
                .insert(ctx, std::mem::take(&mut self.pending_reads));
        }
    }

    async fn handle_ready(&mut self) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();

        if let Some(ss) = rd.ss() {
            let mut st = self.shared.status.lock().unwrap();
            if st.leader != ss.leader_id && !self.waiters.is_empty() {
                // Proposals in flight may have died with the old leader (a follower forwards
                // them, and nothing resends a lost forward). Tell their clients now, as etcd
                // does, instead of letting them wait out the timeout; an entry that still
                // commits is applied all the same (the outcome was indeterminate).
                for (_, w) in std::mem::take(&mut self.waiters) {
                    let _ = w.send(Err(ApiError::LeaderChanged));
                }
            }
            st.leader = ss.leader_id;
            st.is_leader = ss.raft_state == StateRole::Leader;
            if ss.leader_id != 0 {
                self.shared
                    .joined
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            drop(st);
            if ss.leader_id == 0 {
                // Read indexes in flight may never be answered by a lost leader; clients retry.
                self.read_batches.clear();
            }
        }
        for rs in rd.take_read_states() {
            let ctx = rs
                .request_ctx
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if let Some(batch) = self.read_batches.remove(&ctx) {
                self.ready_reads.push((rs.index, batch));
            }
        }

        // 1. A leader sends its messages while it persists (raft thesis 10.2.1).
        let msgs = rd.take_messages();
        let sent_any = !msgs.is_empty();
        self.transport.send(msgs);
        if sent_any && rd.must_sync() {
            // The peer senders just woke sit in this worker's LIFO slot, which no other
            // worker may take: let them put the messages on the wire before the fsync below
            // blocks this worker.
            tokio::task::yield_now().await;
        }

        // 2. A snapshot from the leader replaces the state machine.
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }

        // 3-5. Apply what is committed (readers see it at once), then append the new entries
        // and hard state to the log file with one fsync. Only when raft says it must (new
        // entries, term or vote): a hard state that only moved its commit index is not worth
        // an fsync, as in etcd; a restart takes the commit index from the applied index.
        self.apply_entries(rd.take_committed_entries())?;
        if rd.must_sync() {
            let store = self.raw.mut_store();
            store.append(rd.entries())?;
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs);
            }
            store.sync()?;
        } else {
            debug_assert!(rd.entries().is_empty(), "new entries always need a sync");
        }

        // 6. Messages that must follow persistence (votes, append responses).
        self.transport.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        self.transport.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();

        {
            let mut st = self.shared.status.lock().unwrap();
            st.term = self.raw.raft.term;
            st.commit = self.raw.raft.raft_log.committed;
            st.applied = self.applied;
        }
        self.release_reads();
        Ok(())
    }

    fn release_reads(&mut self) {
        let applied = self.applied;
        self.ready_reads.retain_mut(|(index, batch)| {
            if *index <= applied {
                for r in batch.drain(..) {
                    let _ = r.send(());
                }
                false
            } else {
                true
            }
        });
    }

    /// The open write transaction, or a new one.
    fn take_txn(&mut self) -> Result<redb::WriteTransaction, NodeError> {
        match self.open_txn.take() {
            Some(txn) => Ok(txn),
            None => Ok(self.shared.db.begin_write()?),
        }
    }

    /// Commits the applied effects durably, so a restart replays the log only from here.
    fn persist_applied(&mut self) -> Result<(), NodeError> {
        if self.applied == self.durable_applied && self.open_txn.is_none() {
            return Ok(());
        }
        let mut txn = self.take_txn()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        txn.open_table(META)?.insert(
            meta_keys::APPLIED_INDEX,
            self.applied.to_be_bytes().as_slice(),
        )?;
        txn.commit()?;
        // Only after the commit: a reader that began before it still finds the rows in memory.
        self.shared.mvcc.write().unwrap().committed();
        self.durable_applied = self.applied;
        Ok(())
    }

    /// Applies committed entries in one non-durable commit (with the applied index).
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::new();
        let uncommitted;
        {
            let shared = self.shared.clone();
            let mut mvcc = shared.mvcc.write().unwrap();
            let txn = self.take_txn()?;
            for e in &entries {
                if e.index <= self.applied {
                    continue;
                }
                match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => {}
                    EntryType::EntryNormal => match InternalRequest::decode(e.data.as_ref()) {
                        Ok(req) => {
                            let result = self
                                .apply_request(&txn, &mut mvcc, &req)
                                .map_err(ApiError::Mvcc);
                            if let Some(w) = self.waiters.remove(&req.id) {
                                replies.push((w, result));
                            }
                        }
                        Err(err) => {
                            // Only members write entries; an undecodable one is a bug or
                            // corruption, and every member skips it the same way.
                            tracing::error!(
                                index = e.index,
                                "undecodable raft entry skipped: {err}"
                            );
                        }
                    },
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        self.apply_conf_change(&txn, e)?;
                    }
                }
                self.applied = e.index;
            }
            self.open_txn = Some(txn);
            uncommitted = mvcc.uncommitted_rows();
        }
        for (w, r) in replies {
            let _ = w.send(r);
        }
        if uncommitted >= MAX_UNCOMMITTED_ROWS {
            self.persist_applied()?;
        }
        Ok(())
    }

    fn apply_request(
        &self,
        txn: &redb::WriteTransaction,
        mvcc: &mut Mvcc,
        req: &InternalRequest,
    ) -> Result<Applied, MvccError> {
        let applied = match &req.request {
            Some(Request::Put(r)) => Applied::Put(mvcc.put(txn, r)?),
            Some(Request::DeleteRange(r)) => Applied::DeleteRange(mvcc.delete_range(txn, r)?),
            Some(Request::Txn(r)) => Applied::Txn(mvcc.txn(txn, r)?),
            Some(Request::Compaction(r)) => Applied::Compact(mvcc.compact(txn, r.revision)?),
            Some(Request::SetAttributes(a)) => {
                if let Err(e) = self.shared.members.write().unwrap().set_attributes(txn, a) {
                    tracing::error!("storing member attributes: {e}");
                }
                Applied::Attributes
            }
            None => Applied::Attributes,
        };
        Ok(applied)
    }

    fn apply_conf_change(
        &mut self,
        txn: &redb::WriteTransaction,
        e: &Entry,
    ) -> Result<(), NodeError> {
        // Membership changes arrive with runtime reconfiguration; until then raft still has to
        // see any conf change entry applied so its view stays consistent.
        let cs = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            let cc = ConfChangeV2::parse_from_bytes(&e.data)
                .map_err(|err| NodeError::Fatal(format!("bad conf change: {err}")))?;
            self.raw.apply_conf_change(&cc)?
        } else {
            let cc = ConfChange::parse_from_bytes(&e.data)
                .map_err(|err| NodeError::Fatal(format!("bad conf change: {err}")))?;
            self.raw.apply_conf_change(&cc)?
        };
        self.raw.mut_store().set_conf_state(txn, cs)?;
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), NodeError> {
        let data = SnapshotData::decode(snap.get_data())
            .map_err(|e| NodeError::Fatal(format!("undecodable snapshot from leader: {e}")))?;
        let index = snap.get_metadata().index;
        let shared = self.shared.clone();
        let mut mvcc = shared.mvcc.write().unwrap();
        // The snapshot replaces whatever the open transaction holds.
        let mut txn = self.take_txn()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        *mvcc = Mvcc::import(&txn, &data)?;
        *self.shared.members.write().unwrap() = Membership::import(&txn, &data)?;
        self.raw.mut_store().install_snapshot(&txn, &snap)?;
        txn.open_table(META)?
            .insert(meta_keys::APPLIED_INDEX, index.to_be_bytes().as_slice())?;
        txn.commit()?;
        drop(mvcc);
        // Only now that the state machine holds the snapshot durably may the log drop entries.
        self.raw.mut_store().rewrite()?;
        tracing::info!(index, "installed snapshot from leader");
        SNAPSHOTS_INSTALLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.applied = index;
        self.durable_applied = index;
        self.last_snapshot_index = index;
        Ok(())
    }

    /// Builds a state-machine snapshot at the applied index for lagging followers, and drops
    /// log entries it covers (keeping a tail for followers that are only a little behind).
    fn snapshot_and_compact(&mut self) -> Result<(), NodeError> {
        let index = self.applied;
        let Some(term) = self.raw.store().entry_term(index) else {
            return Ok(());
        };
        // The snapshot is read from the data file: commit what is applied first.
        self.persist_applied()?;
        let mut data = SnapshotData::default();
        {
            let mvcc = self.shared.mvcc.read().unwrap();
            let txn = self.shared.db.begin_read()?;
            mvcc.export(&txn, &mut data)?;
        }
        self.shared.members.read().unwrap().export(&mut data);
        let mut snap = Snapshot::default();
        snap.set_data(data.encode_to_vec().into());
        let md = snap.mut_metadata();
        md.index = index;
        md.term = term;
        md.set_conf_state(self.raw.store().conf_state().clone());
        self.raw.mut_store().set_snapshot(snap);
        self.last_snapshot_index = index;

        // A tiny --snapshot-count asks for a small log: keep no more than it as catch-up tail.
        let compact_to = index.saturating_sub(CATCH_UP_ENTRIES.min(self.snapshot_count));
        if compact_to > self.raw.store().compacted_index() {
            // The log may drop only what the data file holds durably.
            self.persist_applied()?;
            self.raw.mut_store().compact(compact_to)?;
            tracing::info!(index, compact_to, "snapshot taken, raft log compacted");
        }
        Ok(())
    }
}

fn read_applied(txn: &redb::ReadTransaction) -> Result<u64, NodeError> {
    match txn.open_table(META) {
        Ok(t) => Ok(t
            .get(meta_keys::APPLIED_INDEX)?
            .and_then(|v| v.value().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
