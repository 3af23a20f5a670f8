//! The executor of the replicated server: it feeds `detcd_core::server::Server` its inputs
//! (ticks, peer messages, proposals, reads, disk completions) and carries out its outputs
//! with real or simulated I/O. The raft logic (Ready handling, apply, snapshot policy) is in
//! core; this file only moves things between the server and the world.
//!
//! Where the disk work runs, so nothing blocks an async worker:
//! - the raft log file: one writer (a dedicated thread in production, a task under madsim)
//!   that takes every queued append, writes them, and syncs once (group commit);
//! - the redb commit of applied effects: a blocking task (`spawn_blocking`).
//!
//! Responses go to clients only after the entries they answer are committed by raft and
//! applied; the WAL write of a Ready is durable before its persisted messages leave.

use crate::errors::ApiError;
use crate::snapshot_files::SnapshotFiles;
use crate::transport::{PeerEvent, Transport};
use detcd_core::lease::Lessor;
use detcd_core::membership::{MemberChange, Membership};
use detcd_core::mvcc::Mvcc;
use detcd_core::proto::detcdpb::{self, internal_request::Request};
use detcd_core::proto::etcdserverpb as pb;
use detcd_core::raft_log::{LogError, RaftLog};
use detcd_core::server::{Output, RequestError, Server, ServerConfig};
use detcd_core::state::{self, Fatal, KvState, PendingCommit, SnapshotSource, StateViews};
use detcd_core::wal::LogFile;
use raft::prelude::*;
use redb::ReadableDatabase;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub use detcd_core::state::Applied;
/// Raft and apply progress as the server last reported it.
pub type RaftStatus = detcd_core::server::Status;

/// Snapshots installed from a leader by any member of this process (the simulator checks that
/// its snapshot scenario really exercised the path).
pub static SNAPSHOTS_INSTALLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How much longer than the server a client's write waits for its answer: the server's
/// own timeout answer says more (whether the leader changed).
const PROPOSAL_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Limits on the driver's queues: a full queue pushes back on clients instead of growing.
pub const PROPOSAL_QUEUE: usize = 4096;
pub const READ_QUEUE: usize = 4096;
pub const INBOUND_QUEUE: usize = 4096;
/// At most this many queued inputs of one kind are taken per turn of the driver.
const MAX_BATCH: usize = 512;

pub type ApplyResult = Result<Applied, ApiError>;

/// State shared between the driver and the client API.
pub struct Shared {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The data file; replaced by its compact copy after a defragmentation (a read holds
    /// the `Arc` it began with), taken out to be closed at a graceful stop (then `None`).
    pub db: RwLock<Option<Arc<redb::Database>>>,
    /// Index and KV history. Held for writing only while an entry is applied, so a reader
    /// never sees an index entry whose row is not yet visible.
    pub mvcc: RwLock<Mvcc>,
    pub members: RwLock<Membership>,
    /// Leases; the leader's clock over them is advanced by the driver's ticks.
    pub leases: RwLock<Lessor>,
    pub status: Mutex<RaftStatus>,
    /// Becomes true once this member has published itself to the cluster (etcd's
    /// ReadyNotify): only then does it serve clients.
    pub ready: tokio::sync::watch::Sender<bool>,
    /// The watchers of this member's clients, fed by the driver after each apply.
    pub watch: crate::watch::WatchHub,
    /// This member's `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The v2 keys store (its watchers are this member's waiting v2 reads).
    pub v2: RwLock<detcd_core::v2store::V2Store>,
    /// The channels of those waiting reads.
    pub v2_waiters: crate::v2_keys::Waiters,
    /// Disk work the driver handed to blocking threads that has not ended.
    pub disk_jobs: DiskJobs,
}

/// Counts the disk jobs (data file commits, snapshot builds and installs, defragmentations)
/// running off the driver. A graceful stop waits for them before closing the data file: a
/// commit in flight holds its write transaction, and redb defers a close past it.
#[derive(Default)]
pub struct DiskJobs(Arc<std::sync::atomic::AtomicUsize>);

impl DiskJobs {
    /// Counts one job until the returned guard drops.
    fn start(&self) -> DiskJob {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        DiskJob(self.0.clone())
    }

    /// How many jobs have started and not ended.
    pub fn running(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One running disk job (see [`DiskJobs`]).
struct DiskJob(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DiskJob {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Shared {
    /// A member's shared state over a fresh in-memory data file (unit tests).
    #[cfg(test)]
    pub fn for_tests() -> Arc<Shared> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        /// A log file in memory: these tests never read it back.
        struct MemLog(Vec<u8>);
        impl LogFile for MemLog {
            fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
                Ok(self.0.clone())
            }
            fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
                self.0.extend_from_slice(bytes);
                Ok(())
            }
            fn sync(&mut self) -> std::io::Result<()> {
                Ok(())
            }
            fn truncate(&mut self, len: u64) -> std::io::Result<()> {
                self.0.truncate(len as usize);
                Ok(())
            }
            fn replace(&mut self, bytes: &[u8]) -> std::io::Result<()> {
                self.0 = bytes.to_vec();
                Ok(())
            }
        }
        state::initialize_new_member(&db, &mut MemLog(Vec::new()), 7, 1, &[(1, vec![])]).unwrap();
        let loaded = state::load_views(&db).unwrap();
        Arc::new(Shared {
            member_id: 1,
            cluster_id: 7,
            db: RwLock::new(Some(Arc::new(db))),
            watch: crate::watch::WatchHub::new(loaded.mvcc.current_revision()),
            mvcc: RwLock::new(loaded.mvcc),
            members: RwLock::new(loaded.members),
            leases: RwLock::new(loaded.leases),
            status: Mutex::new(RaftStatus::default()),
            ready: tokio::sync::watch::Sender::new(false),
            metrics: Arc::new(crate::metrics::Metrics::for_tests(1)),
            v2: RwLock::new(loaded.v2),
            v2_waiters: Default::default(),
            disk_jobs: Default::default(),
        })
    }

    pub fn status(&self) -> RaftStatus {
        *self.status.lock().unwrap()
    }

    /// True once this member has had a leader or restarted from its own log: from then on a
    /// peer from another cluster is refused, not a reason to exit.
    pub fn joined(&self) -> bool {
        self.status().has_had_leader
    }

    /// A consistent read view: the MVCC state (an O(1) clone of persistent maps, taken under
    /// the lock for no longer than that) and a redb read transaction begun after it, so every
    /// row the view's index names is either in the view's uncommitted rows or visible to the
    /// transaction. Apply never waits for a read that runs on it.
    /// After [`Shared::take_data_file`] (the member is stopping), [`ApiError::Stopped`], which
    /// clients retry elsewhere; a storage failure is [`ApiError::Internal`].
    pub fn read_view(&self) -> Result<(Mvcc, redb::ReadTransaction), ApiError> {
        let mvcc = self.mvcc.read().unwrap().clone();
        let db = self.db.read().unwrap().clone().ok_or(ApiError::Stopped)?;
        let txn = db.begin_read().map_err(|e| match e {
            redb::TransactionError::Storage(redb::StorageError::DatabaseClosed) => {
                ApiError::Stopped
            }
            e => ApiError::Internal(e.to_string()),
        })?;
        Ok((mvcc, txn))
    }

    /// Takes the data file out for closing (a graceful stop): reads begun later fail with
    /// [`ApiError::Stopped`]. `None` if it was taken already.
    pub fn take_data_file(&self) -> Option<Arc<redb::Database>> {
        self.db.write().unwrap().take()
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

/// The state machine's in-memory halves, behind the locks the client API reads through.
pub struct SharedViews(pub Arc<Shared>);

impl StateViews for SharedViews {
    fn mvcc<R>(&self, f: impl FnOnce(&Mvcc) -> R) -> R {
        f(&self.0.mvcc.read().unwrap())
    }
    fn mvcc_mut<R>(&self, f: impl FnOnce(&mut Mvcc) -> R) -> R {
        f(&mut self.0.mvcc.write().unwrap())
    }
    fn members<R>(&self, f: impl FnOnce(&Membership) -> R) -> R {
        f(&self.0.members.read().unwrap())
    }
    fn members_mut<R>(&self, f: impl FnOnce(&mut Membership) -> R) -> R {
        f(&mut self.0.members.write().unwrap())
    }
    fn leases<R>(&self, f: impl FnOnce(&Lessor) -> R) -> R {
        f(&self.0.leases.read().unwrap())
    }
    fn leases_mut<R>(&self, f: impl FnOnce(&mut Lessor) -> R) -> R {
        f(&mut self.0.leases.write().unwrap())
    }
    fn v2<R>(&self, f: impl FnOnce(&detcd_core::v2store::V2Store) -> R) -> R {
        f(&self.0.v2.read().unwrap())
    }
    fn v2_mut<R>(&self, f: impl FnOnce(&mut detcd_core::v2store::V2Store) -> R) -> R {
        f(&mut self.0.v2.write().unwrap())
    }
}

struct Proposal {
    request: Request,
    respond: oneshot::Sender<ApplyResult>,
}

/// A membership change for the driver, the asked member's `--strict-reconfig-check`, and who
/// waits for its result.
type MemberChangeJob = (MemberChange, bool, oneshot::Sender<ApplyResult>);

/// A leader move for the driver, and who waits for the answer: to that member (MoveLeader),
/// or, with None, etcd's transfer before a stop (the driver picks the transferee).
type LeaderMoveJob = (Option<u64>, oneshot::Sender<ApplyResult>);

/// MoveLeader requests queued to the driver (rare: an operator's command).
const LEADER_MOVE_QUEUE: usize = 16;
/// Requests for a copy of the state (Hash, Snapshot) queued to the driver.
const STATE_COPY_QUEUE: usize = 16;

/// Membership changes queued to the driver (few: clients, and followers forwarding theirs).
pub const MEMBER_CHANGE_QUEUE: usize = 64;

/// Where the API and the peer service hand the driver membership changes.
#[derive(Clone)]
pub struct MemberChanges(mpsc::Sender<MemberChangeJob>);

impl MemberChanges {
    /// Hands `change` to this member's server and waits until it has applied here. Returns
    /// the raft index it applied at; [`ApiError::NotLeader`] when this member is not the
    /// leader (the caller forwards it there).
    pub async fn change(
        &self,
        change: MemberChange,
        strict: bool,
        timeout: Duration,
    ) -> Result<u64, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((change, strict, tx))
            .await
            .map_err(|_| ApiError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(Applied::MemberChanged { index }))) => Ok(index),
            Ok(Ok(Ok(other))) => Err(ApiError::Internal(format!(
                "a membership change answered with {other:?}"
            ))),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Timeout),
        }
    }
}

/// The handle the API uses to reach the driver.
#[derive(Clone)]
pub struct NodeHandle {
    pub shared: Arc<Shared>,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<oneshot::Sender<Result<(), ApiError>>>,
    pub member_changes: MemberChanges,
    defrag: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
    leader_moves: mpsc::Sender<LeaderMoveJob>,
    state_copies: mpsc::Sender<oneshot::Sender<Box<SnapshotSource>>>,
}

impl NodeHandle {
    /// Sends a write through raft and waits for its applied result. The server itself answers
    /// a write whose entry did not apply within its request timeout (saying whether the leader
    /// changed meanwhile); `timeout` here is a last resort a little later.
    pub async fn propose(&self, request: Request, timeout: Duration) -> Result<Applied, ApiError> {
        let (tx, rx) = oneshot::channel();
        let p = Proposal {
            request,
            respond: tx,
        };
        self.proposals
            .send(p)
            .await
            .map_err(|_| ApiError::Stopped)?;
        match tokio::time::timeout(timeout + PROPOSAL_TIMEOUT_MARGIN, rx).await {
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
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(self.timeout_error()),
        }
    }

    /// Defragments this member's data file and waits until it is done (or failed, saying
    /// why). Several callers at once share one defragmentation.
    pub async fn defragment(&self) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.defrag.send(tx).await.map_err(|_| ApiError::Stopped)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::Internal(e)),
            Err(_) => Err(ApiError::Stopped),
        }
    }

    /// etcd's MoveLeader: on the leader, hands leadership to member `target` and waits
    /// until it leads (`Server::handle_move_leader` says how it is refused, and times out
    /// after the request timeout; `timeout` here is a last resort a little later).
    pub async fn move_leader(&self, target: u64, timeout: Duration) -> Result<(), ApiError> {
        self.move_leader_to(Some(target), timeout).await
    }

    async fn move_leader_to(&self, target: Option<u64>, timeout: Duration) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.leader_moves
            .send((target, tx))
            .await
            .map_err(|_| ApiError::Stopped)?;
        match tokio::time::timeout(timeout + PROPOSAL_TIMEOUT_MARGIN, rx).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Refused(
                detcd_core::server::RefusedBy::leader_transfer_timeout(),
            )),
        }
    }

    /// etcd's TransferLeadership as this member stops (`Server::handle_transfer_for_stop`):
    /// returns once another voter leads, at once off the leader, and with etcd's errors
    /// when no voter is connected or the transfer does not finish within `timeout`.
    pub async fn transfer_leadership_for_stop(&self, timeout: Duration) -> Result<(), ApiError> {
        self.move_leader_to(None, timeout).await
    }

    /// A point-in-time copy of this member's applied state (`Server::handle_state_copy`):
    /// a read transaction over it, to read off the async workers (Maintenance.Hash and
    /// Snapshot). It waits for the applied state to be durable (one commit at most).
    pub async fn state_copy(&self, timeout: Duration) -> Result<SnapshotSource, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.state_copies
            .send(tx)
            .await
            .map_err(|_| ApiError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(source)) => Ok(*source),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Timeout),
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

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Storage(#[from] LogError),
    #[error("{0}")]
    Fatal(String),
    /// This member was removed from the cluster (etcd exits 0 then).
    #[error("{}", crate::transport::REMOVED_MEMBER)]
    Removed,
}

impl From<Fatal> for NodeError {
    fn from(e: Fatal) -> Self {
        NodeError::Fatal(e.0)
    }
}

pub struct NodeParams {
    pub member_id: u64,
    pub cluster_id: u64,
    pub heartbeat: Duration,
    /// Election timeout in heartbeat ticks.
    pub election_ticks: usize,
    pub snapshot_count: u64,
    /// How long a request may wait for a leader before it fails with "no leader".
    pub request_timeout: Duration,
    pub start_unix_ms: u64,
    /// The attributes this member publishes once it has a leader.
    pub attributes: detcdpb::MemberAttributes,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
    /// `--max-learners`.
    pub max_learners: usize,
    /// `--feature-gates=AutoPromoteLearners=true`.
    pub auto_promote_learners: bool,
    /// `--experimental-enable-lease-checkpoint`.
    pub lease_checkpoint: bool,
    /// `--pre-vote`.
    pub pre_vote: bool,
    /// `--experimental-snapshot-catchup-entries`.
    pub catch_up_entries: u64,
    /// This member's metrics (the disk timings and the driver's slow steps are recorded here).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// etcd's lease checkpoint interval (lease/lessor.go defaultLeaseCheckpointInterval).
const LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// etcd's HealthInterval: every voter connected this long before a strict reconfiguration.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// A removed member keeps running this long after it applied its removal, so its last
/// messages (the commit of its removal) reach the others (etcd: stopWithDelay, 1 s).
const REMOVED_STOP_DELAY: Duration = Duration::from_secs(1);

/// The entry infra1 skips under the `skip-apply` mutation (a client write, early in a run).
const SKIP_APPLY_MUTATION_INDEX: u64 = 40;

/// What the disk workers report back to the driver.
#[derive(Debug)]
enum DiskDone {
    Persisted(u64),
    Committed(u64),
    SnapshotBuilt(Result<detcd_core::proto::detcdpb::SnapshotRef, Fatal>),
    SnapshotInstalled(Box<Result<detcd_core::state::Installed, Fatal>>),
    Defragmented(Result<redb::Database, String>),
    Failed(String),
}

/// Work for the raft log writer, in the order the server asked for it.
enum LogJob {
    Append {
        number: u64,
        records: Vec<u8>,
        sync: bool,
        then_send: Vec<Message>,
    },
    Replace(Vec<u8>),
}

/// The driver's own state.
pub struct Node {
    server: Server<SharedViews>,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<oneshot::Sender<Result<(), ApiError>>>,
    member_changes: mpsc::Receiver<MemberChangeJob>,
    inbound: mpsc::Receiver<Message>,
    peer_events: mpsc::UnboundedReceiver<PeerEvent>,
    log_jobs: mpsc::UnboundedSender<LogJob>,
    disk_done_tx: mpsc::UnboundedSender<DiskDone>,
    disk_done: mpsc::UnboundedReceiver<DiskDone>,
    waiting_writes: BTreeMap<u64, oneshot::Sender<ApplyResult>>,
    waiting_reads: BTreeMap<u64, oneshot::Sender<Result<(), ApiError>>>,
    heartbeat: Duration,
    snapshots_installed: u64,
    snapshot_files: Arc<dyn SnapshotFiles>,
    /// When this member was removed from the cluster: it stops [`REMOVED_STOP_DELAY`] later.
    removed_at: Option<tokio::time::Instant>,
    defrag_requests: mpsc::Receiver<oneshot::Sender<Result<(), String>>>,
    /// Clients waiting for the defragmentation under way (or about to start).
    defrag_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    defragmenter: Option<Defragmenter>,
    leader_moves: mpsc::Receiver<LeaderMoveJob>,
    state_copy_requests: mpsc::Receiver<oneshot::Sender<Box<SnapshotSource>>>,
    /// Who waits for each state copy the server was asked for, by request id.
    waiting_copies: BTreeMap<u64, oneshot::Sender<Box<SnapshotSource>>>,
}

/// Copies a data file compactly and replaces it with the copy (see `crate::defrag`);
/// absent where the data file cannot be replaced (the simulator's disks).
pub type Defragmenter =
    Arc<dyn Fn(&redb::Database) -> Result<redb::Database, String> + Send + Sync>;

/// Defragmentation requests queued to the driver (each waits for the one under way).
const DEFRAG_QUEUE: usize = 16;

/// The channels the transport and API need to reach the driver.
pub struct NodeInputs {
    pub inbound: mpsc::Sender<Message>,
    pub peer_events: mpsc::UnboundedSender<PeerEvent>,
    pub member_changes: MemberChanges,
}

/// What a member keeps on disk: the raft log (loaded) and its file, the data file, the
/// snapshot files.
pub struct NodeStorage {
    pub log: RaftLog,
    pub log_file: Box<dyn LogFile>,
    pub db: Arc<redb::Database>,
    pub snapshot_files: Arc<dyn SnapshotFiles>,
    pub defragmenter: Option<Defragmenter>,
}

impl Node {
    pub fn new(
        params: NodeParams,
        storage: NodeStorage,
        transport: Arc<Transport>,
        peer_events: (
            mpsc::UnboundedSender<PeerEvent>,
            mpsc::UnboundedReceiver<PeerEvent>,
        ),
        restarted: bool,
    ) -> Result<(Node, NodeHandle, NodeInputs), NodeError> {
        let NodeStorage {
            log,
            log_file,
            db,
            snapshot_files,
            defragmenter,
        } = storage;
        let state::Loaded {
            mvcc,
            members,
            leases,
            v2,
        } = state::load_views(&db)?;
        let applied = state::read_applied(&db)?;
        let mut log = log;
        if restarted && crate::mutation::active("forget-hardstate") {
            log.forget_term_and_vote();
        }
        let shared = Arc::new(Shared {
            member_id: params.member_id,
            cluster_id: params.cluster_id,
            db: RwLock::new(Some(db.clone())),
            watch: crate::watch::WatchHub::new(mvcc.current_revision()),
            mvcc: RwLock::new(mvcc),
            members: RwLock::new(members),
            leases: RwLock::new(leases),
            status: Mutex::new(RaftStatus::default()),
            ready: tokio::sync::watch::Sender::new(false),
            metrics: params.metrics.clone(),
            v2: RwLock::new(v2),
            v2_waiters: Default::default(),
            disk_jobs: Default::default(),
        });
        let kv = KvState::new(db, SharedViews(shared.clone()), applied);
        let heartbeat_ms = params.heartbeat.as_millis().max(1) as u64;
        let skip_apply =
            crate::mutation::active("skip-apply") && params.attributes.name == "infra1";
        let mut cfg = ServerConfig::new(params.member_id, params.election_ticks, params.attributes);
        if skip_apply {
            cfg.mutations.skip_apply_at = Some(SKIP_APPLY_MUTATION_INDEX);
        }
        cfg.mutations.stale_member_table =
            crate::mutation::active("stale-member-table") && cfg.attributes.name == "infra1";
        cfg.snapshot_count = params.snapshot_count;
        cfg.start_unix_ms = params.start_unix_ms;
        cfg.election_seed = params.member_id ^ params.start_unix_ms.rotate_left(17);
        cfg.hold_ticks = (params.request_timeout.as_millis() as u64 / heartbeat_ms).max(1);
        // At least two ticks: a round sent just before a tick is not retried at once.
        cfg.read_retry_ticks = (500 / heartbeat_ms).max(2);
        cfg.strict_reconfig_check = params.strict_reconfig_check;
        cfg.max_learners = params.max_learners;
        cfg.auto_promote_learners = params.auto_promote_learners;
        cfg.tick_ms = heartbeat_ms;
        cfg.pre_vote = params.pre_vote;
        cfg.catch_up_entries = params.catch_up_entries;
        cfg.lease_checkpoint_interval_ms = params
            .lease_checkpoint
            .then_some(LEASE_CHECKPOINT_INTERVAL.as_millis() as u64);
        if crate::mutation::active("early-lease-expiry") {
            // Leases expire after a quarter of their TTL: a client's keep-alives (every
            // third of the TTL) can no longer hold them.
            cfg.mutations.early_lease_expiry_percent = 75;
        }
        cfg.health_ticks = (HEALTH_INTERVAL.as_millis() as u64).div_ceil(heartbeat_ms);
        let server = Server::new(
            cfg,
            log,
            kv,
            restarted,
            &detcd_core::raft_logger::raft_logger(),
        )?;
        *shared.status.lock().unwrap() = server.status();

        let (ptx, prx) = mpsc::channel(PROPOSAL_QUEUE);
        let (rtx, rrx) = mpsc::channel(READ_QUEUE);
        let (itx, irx) = mpsc::channel(INBOUND_QUEUE);
        let (mtx, mrx) = mpsc::channel(MEMBER_CHANGE_QUEUE);
        let (dtx, drx) = mpsc::channel(DEFRAG_QUEUE);
        let (ltx, lrx) = mpsc::channel(LEADER_MOVE_QUEUE);
        let (ctx, crx) = mpsc::channel(STATE_COPY_QUEUE);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let log_jobs = start_log_writer(LogWriter {
            file: log_file,
            transport: transport.clone(),
            done: done_tx.clone(),
            metrics: params.metrics.clone(),
        });
        let node = Node {
            server,
            shared: shared.clone(),
            transport,
            proposals: prx,
            reads: rrx,
            member_changes: mrx,
            inbound: irx,
            peer_events: peer_events.1,
            log_jobs,
            disk_done_tx: done_tx,
            disk_done: done_rx,
            waiting_writes: BTreeMap::new(),
            waiting_reads: BTreeMap::new(),
            heartbeat: params.heartbeat,
            snapshots_installed: 0,
            snapshot_files,
            removed_at: None,
            defrag_requests: drx,
            defrag_waiters: Vec::new(),
            defragmenter,
            leader_moves: lrx,
            state_copy_requests: crx,
            waiting_copies: BTreeMap::new(),
        };
        let handle = NodeHandle {
            shared,
            proposals: ptx,
            reads: rtx,
            member_changes: MemberChanges(mtx.clone()),
            defrag: dtx,
            leader_moves: ltx,
            state_copies: ctx,
        };
        let inputs = NodeInputs {
            inbound: itx,
            peer_events: peer_events.0,
            member_changes: MemberChanges(mtx),
        };
        Ok((node, handle, inputs))
    }

    /// Runs until a fatal error (failed fsync or commit, a storage failure during apply,
    /// conflicting cluster ID during bootstrap) or until this member is removed from the
    /// cluster ([`NodeError::Removed`]).
    pub async fn run(mut self) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop_at = self.removed_at.map(|t| t + REMOVED_STOP_DELAY);
            let applied_before = self.server.status().applied;
            // How long this turn's handling took (not its wait): a turn that applied
            // entries and took longer than SLOW counts as a slow apply.
            let mut step = Duration::ZERO;
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)), if stop_at.is_some() => {
                    return Err(NodeError::Removed);
                }
                Some(done) = self.disk_done.recv() => match done {
                    DiskDone::Persisted(n) => timed(&mut step, "handling a log write", || self.server.handle_persisted(n))?,
                    DiskDone::Committed(applied) => timed(&mut step, "handling a commit", || self.server.handle_committed(applied))?,
                    DiskDone::SnapshotBuilt(data) => self.server.handle_snapshot_built(data)?,
                    DiskDone::SnapshotInstalled(res) => self.server.handle_snapshot_installed(*res)?,
                    DiskDone::Defragmented(res) => self.defragmented(res)?,
                    DiskDone::Failed(msg) => return Err(NodeError::Fatal(msg)),
                },
                Some(ev) = self.peer_events.recv() => match ev {
                    PeerEvent::Unreachable(id) => self.server.handle_unreachable(id),
                    PeerEvent::Snapshot(id, ok) => self.server.handle_snapshot_status(id, ok),
                    PeerEvent::SnapshotFileUnusable(index) => self.server.handle_snapshot_unusable(index),
                    // A sender replaced meanwhile (new URLs) reports for a peer it no longer serves.
                    PeerEvent::Active(id, sender, active) => if self.transport.is_current(id, sender) {
                        self.shared.metrics.set_peer_active(self.shared.member_id, id, active);
                        self.server.handle_peer_active(id, active)
                    } else if !active && !self.transport.has_peer(id) {
                        // The sender of a removed member ended: no stream to it any more
                        // (etcd's gauge drops to 0 as the peer stops).
                        self.shared.metrics.set_peer_active(self.shared.member_id, id, false);
                    },
                    PeerEvent::Removed if crate::mutation::active("ignore-removal") => {}
                    PeerEvent::Removed => return Err(NodeError::Removed),
                    PeerEvent::Fatal(msg) => return Err(NodeError::Fatal(msg)),
                },
                Some(m) = self.inbound.recv() => {
                    let mut msgs = vec![m];
                    while msgs.len() < MAX_BATCH {
                        match self.inbound.try_recv() {
                            Ok(m) => msgs.push(m),
                            Err(_) => break,
                        }
                    }
                    timed(&mut step, "handling peer messages", || self.server.handle_messages(msgs))?;
                }
                _ = ticker.tick() => {
                    self.server.handle_wall_clock(unix_ms_now());
                    timed(&mut step, "handling a tick", || self.server.handle_tick())?
                }
                Some(waiter) = self.defrag_requests.recv() => {
                    if self.defragmenter.is_none() {
                        let _ = waiter.send(Err("defragmentation is not supported on this member's storage".into()));
                    } else {
                        self.defrag_waiters.push(waiter);
                        self.server.handle_defragment()?;
                    }
                }
                Some(p) = self.proposals.recv() => {
                    let mut batch = vec![p];
                    while batch.len() < MAX_BATCH {
                        match self.proposals.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    // A client that gave up is not proposed for.
                    batch.retain(|p| !p.respond.is_closed());
                    let (requests, responders): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|p| (p.request, p.respond)).unzip();
                    let ids = timed(&mut step, "handling proposals", || self.server.handle_proposals(requests))?;
                    self.waiting_writes.extend(ids.into_iter().zip(responders));
                }
                Some((change, strict, respond)) = self.member_changes.recv() => {
                    let id = self.server.handle_member_change(change, strict)?;
                    self.waiting_writes.insert(id, respond);
                }
                Some((target, respond)) = self.leader_moves.recv() => {
                    let id = match target {
                        Some(target) => self.server.handle_move_leader(target)?,
                        None => self.server.handle_transfer_for_stop()?,
                    };
                    self.waiting_writes.insert(id, respond);
                }
                Some(respond) = self.state_copy_requests.recv() => {
                    let id = self.server.handle_state_copy()?;
                    self.waiting_copies.insert(id, respond);
                }
                Some(r) = self.reads.recv() => {
                    let mut batch = vec![r];
                    while batch.len() < MAX_BATCH {
                        match self.reads.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    let ids = self.server.handle_reads(batch.len())?;
                    self.waiting_reads.extend(ids.into_iter().zip(batch));
                }
                else => return Ok(()),
            }
            if step > SLOW && self.server.status().applied > applied_before {
                self.shared.metrics.slow_applies.inc();
            }
            self.carry_out();
        }
    }

    /// Performs every output the server has queued.
    fn carry_out(&mut self) {
        while let Some(out) = self.server.poll_output() {
            match out {
                Output::Send(msgs) => self.transport.send(msgs),
                Output::AppendLog {
                    number,
                    records,
                    sync,
                    then_send,
                } => {
                    let _ = self.log_jobs.send(LogJob::Append {
                        number,
                        records,
                        sync,
                        then_send,
                    });
                }
                Output::ReplaceLog { image } => {
                    let _ = self.log_jobs.send(LogJob::Replace(image));
                }
                Output::Commit(pending) => {
                    let done = self.disk_done_tx.clone();
                    let metrics = self.shared.metrics.clone();
                    self.off_driver_counted(move || commit_and_report(*pending, &done, &metrics));
                }
                Output::InstallSnapshot(install) => {
                    let (done, files) = (self.disk_done_tx.clone(), self.snapshot_files.clone());
                    self.off_driver_counted(move || {
                        let index = install.snap.get_metadata().index;
                        let installed = files
                            .open(index)
                            .map_err(|e| Fatal::new(&format!("opening snapshot file {index}"), e))
                            .and_then(|f| {
                                let started = std::time::Instant::now();
                                let file = std::io::BufReader::with_capacity(1 << 20, f);
                                let installed = install.run_observed(file, |rows| {
                                    tracing::info!(
                                        index,
                                        rows,
                                        took_ms = started.elapsed().as_millis() as u64,
                                        "staged the snapshot's rows"
                                    )
                                });
                                tracing::info!(
                                    index,
                                    took_ms = started.elapsed().as_millis() as u64,
                                    ok = installed.is_ok(),
                                    "snapshot install finished"
                                );
                                installed
                            });
                        if installed.is_ok() {
                            // The data file holds it now; the copy would double the data dir.
                            files.remove(index);
                        }
                        let _ = done.send(DiskDone::SnapshotInstalled(Box::new(installed)));
                    });
                }
                Output::Defragment(db) => {
                    let done = self.disk_done_tx.clone();
                    match self.defragmenter.clone() {
                        Some(defragment) => self.off_driver_counted(move || {
                            let _ = done.send(DiskDone::Defragmented(defragment(&db)));
                        }),
                        None => {
                            let _ = done.send(DiskDone::Defragmented(Err("not supported".into())));
                        }
                    }
                }
                Output::BuildSnapshot(source) => {
                    let (done, files) = (self.disk_done_tx.clone(), self.snapshot_files.clone());
                    self.off_driver_counted(move || {
                        let _ =
                            done.send(DiskDone::SnapshotBuilt(build_snapshot(*source, &*files)));
                    });
                }
                Output::StateCopy { id, source } => {
                    if let Some(w) = self.waiting_copies.remove(&id) {
                        let _ = w.send(source);
                    }
                }
                Output::Response { id, result } => {
                    if let Some(w) = self.waiting_writes.remove(&id) {
                        let _ = w.send(result.map_err(api_error));
                    }
                }
                Output::ReadReady { id, result } => {
                    if let Some(w) = self.waiting_reads.remove(&id) {
                        let _ = w.send(result.map_err(api_error));
                    }
                }
                Output::MembershipChanged(peers) => self.transport.set_peers(&peers),
                Output::Events(events) => self.shared.watch.publish(events),
                Output::StoreReplaced(revision) => self.shared.watch.replaced(revision),
                Output::V2Fired(fired) => {
                    let gone = self.shared.v2_waiters.fire(fired);
                    if !gone.is_empty() {
                        let mut store = self.shared.v2.write().unwrap();
                        for id in gone {
                            store.cancel_watch(id);
                        }
                    }
                }
                Output::Removed if crate::mutation::active("ignore-removal") => {}
                Output::Removed => {
                    tracing::warn!(
                        "{}; the data-dir used by this member must be removed",
                        crate::transport::REMOVED_MEMBER
                    );
                    self.removed_at
                        .get_or_insert_with(tokio::time::Instant::now);
                }
            }
        }
        let status = self.server.status();
        if status.snapshots_installed > self.snapshots_installed {
            SNAPSHOTS_INSTALLED.fetch_add(
                status.snapshots_installed - self.snapshots_installed,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.snapshots_installed = status.snapshots_installed;
        }
        let mut shared_status = self.shared.status.lock().unwrap();
        if status.published && !shared_status.published {
            tracing::info!("ready to serve client requests");
            self.shared.ready.send_replace(true);
        }
        *shared_status = status;
    }
}

fn api_error(e: RequestError) -> ApiError {
    match e {
        RequestError::Refused(r) => ApiError::Refused(r),
        RequestError::NoLeader => ApiError::NoLeader,
        RequestError::LeaderChanged => ApiError::LeaderChanged,
        RequestError::TimedOut {
            leader_failed: false,
        } => ApiError::Timeout,
        RequestError::TimedOut {
            leader_failed: true,
        } => ApiError::TimeoutDueToLeaderFail,
        RequestError::TooManyRequests => ApiError::TooManyRequests,
        RequestError::NotLeader(leader) => ApiError::NotLeader(leader),
    }
}

/// A disk operation or driver step longer than this is logged (etcd warns about slow applies
/// at 100 ms too): on a healthy machine none is.
const SLOW: Duration = Duration::from_millis(100);

/// Runs `f`, logging it if it took longer than [`SLOW`]; adds the time it took to `step`.
fn timed<T>(step: &mut Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    let took = start.elapsed();
    *step += took;
    if took > SLOW {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            "raft driver: {what} took too long"
        );
    }
    out
}

impl Node {
    /// Runs `work` off the driver ([`off_driver`]), counted in [`Shared::disk_jobs`].
    fn off_driver_counted(&self, work: impl FnOnce() + Send + 'static) {
        let job = self.shared.disk_jobs.start();
        off_driver(move || {
            work();
            drop(job);
        });
    }

    /// The copy made for a defragmentation replaces the data file (or the copy failed):
    /// readers and the state machine move to it, and the waiting clients are answered.
    fn defragmented(&mut self, res: Result<redb::Database, String>) -> Result<(), NodeError> {
        let answer = match res {
            Ok(db) => {
                let db = Arc::new(db);
                *self.shared.db.write().unwrap() = Some(db.clone());
                self.server.handle_defragmented(Some(db))?;
                Ok(())
            }
            Err(e) => {
                tracing::warn!("defragmentation failed: {e}");
                self.server.handle_defragmented(None)?;
                Err(e)
            }
        };
        for w in self.defrag_waiters.drain(..) {
            let _ = w.send(answer.clone());
        }
        Ok(())
    }
}

fn commit_and_report(
    pending: PendingCommit,
    done: &mpsc::UnboundedSender<DiskDone>,
    metrics: &crate::metrics::Metrics,
) {
    let PendingCommit { txn, applied } = pending;
    let mut took = Duration::ZERO;
    let committed = timed(&mut took, "committing the data file", || txn.commit());
    metrics.backend_commit.observe(took.as_secs_f64());
    let report = match committed {
        Ok(()) => DiskDone::Committed(applied),
        Err(e) => DiskDone::Failed(format!("committing applied entries failed, stopping: {e}")),
    };
    let _ = done.send(report);
}

/// Writes the snapshot file of `source` and commits it (synced, visible to the transport).
fn build_snapshot(
    source: detcd_core::state::SnapshotSource,
    files: &dyn SnapshotFiles,
) -> Result<detcd_core::proto::detcdpb::SnapshotRef, Fatal> {
    let index = source.index;
    let failed = |e: std::io::Error| Fatal::new(&format!("writing snapshot file {index}"), e);
    let file = files.create(index).map_err(failed)?;
    let (out, file_ref) = source.write_to(std::io::BufWriter::with_capacity(1 << 20, file))?;
    out.into_inner()
        .map_err(|e| failed(e.into_error()))?
        .commit()
        .map_err(failed)?;
    Ok(file_ref)
}

/// Runs disk-bound work (a redb commit, a snapshot file) on a blocking thread.
#[cfg(not(madsim))]
pub(crate) fn off_driver(work: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(work);
}

/// Under madsim: a task of the simulated node (no blocking threads in the simulation).
#[cfg(madsim)]
pub(crate) fn off_driver(work: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move { work() });
}

/// Carries out one batch of log jobs: every append written, then one sync if any asked
/// for it, then the messages that waited for it. Returns the highest Ready number now
/// durable.
fn write_log_batch(
    file: &mut dyn LogFile,
    jobs: Vec<LogJob>,
    transport: &Transport,
    metrics: &crate::metrics::Metrics,
) -> Result<Option<u64>, String> {
    let start = std::time::Instant::now();
    let (count, mut replaced) = (jobs.len(), false);
    let mut need_sync = false;
    let mut last = None;
    let mut after_sync = Vec::new();
    // The records of consecutive appends, written with one call: a busy leader has a Ready,
    // so an append job, per proposal (3,000 writes of 300 bytes a second at 64 clients).
    let mut unwritten: Vec<u8> = Vec::new();
    let write = |file: &mut dyn LogFile, bytes: &mut Vec<u8>| -> Result<(), String> {
        if !bytes.is_empty() {
            file.append(bytes)
                .map_err(|e| format!("raft log write failed, stopping: {e}"))?;
            metrics.wal_write_bytes.add(bytes.len() as i64);
            bytes.clear();
        }
        Ok(())
    };
    for job in jobs {
        match job {
            LogJob::Append {
                number,
                records,
                sync,
                then_send,
            } => {
                if unwritten.is_empty() {
                    unwritten = records;
                } else {
                    unwritten.extend_from_slice(&records);
                }
                need_sync |= sync;
                last = Some(number);
                after_sync.extend(then_send);
            }
            LogJob::Replace(image) => {
                write(file, &mut unwritten)?;
                // The image holds every record appended before it, durably.
                file.replace(&image)
                    .map_err(|e| format!("raft log rewrite failed, stopping: {e}"))?;
                need_sync = false;
                replaced = true;
            }
        }
    }
    write(file, &mut unwritten)?;
    if need_sync {
        let fsync = std::time::Instant::now();
        file.sync()
            .map_err(|e| format!("raft log fsync failed, stopping: {e}"))?;
        metrics.wal_fsync.observe(fsync.elapsed().as_secs_f64());
    }
    let took = start.elapsed();
    if took > SLOW {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            jobs = count,
            replaced,
            "slow raft log write"
        );
    }
    // Straight to the peers: a follower's answer does not wait for the driver.
    transport.send(after_sync);
    Ok(last)
}

/// What the log writer owns: the file, the transport for the messages that wait for a
/// write, the channel back to the driver.
struct LogWriter {
    file: Box<dyn LogFile>,
    transport: Arc<Transport>,
    done: mpsc::UnboundedSender<DiskDone>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl LogWriter {
    /// One turn: `first` and whatever is queued behind it (bounded), written with one sync.
    /// False once the writer must stop (a failed write, or the driver is gone).
    fn turn(&mut self, first: LogJob, queue: &mut mpsc::UnboundedReceiver<LogJob>) -> bool {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        match write_log_batch(self.file.as_mut(), batch, &self.transport, &self.metrics) {
            Ok(Some(n)) => self.done.send(DiskDone::Persisted(n)).is_ok(),
            Ok(None) => true,
            Err(msg) => {
                let _ = self.done.send(DiskDone::Failed(msg));
                false
            }
        }
    }
}

/// The raft log writer: a thread of its own, so an fsync never holds an async worker.
#[cfg(not(madsim))]
fn start_log_writer(mut writer: LogWriter) -> mpsc::UnboundedSender<LogJob> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("detcd-wal".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                if !writer.turn(first, &mut rx) {
                    return;
                }
            }
        })
        .expect("spawning the raft log writer thread");
    tx
}

/// Under madsim the writer is a task of the simulated node (no threads in the simulation).
#[cfg(madsim)]
fn start_log_writer(mut writer: LogWriter) -> mpsc::UnboundedSender<LogJob> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if !writer.turn(first, &mut rx) {
                return;
            }
        }
    });
    tx
}

/// The wall clock in Unix milliseconds (simulated under madsim), for the core's v2 expiry.
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After the data file is taken for closing, reads answer "server stopped" and a second
    /// take finds nothing.
    #[test]
    fn reads_after_the_data_file_is_taken_are_server_stopped() {
        let shared = Shared::for_tests();
        assert!(shared.read_view().is_ok());
        let db = shared.take_data_file().expect("the data file");
        assert!(matches!(shared.read_view(), Err(ApiError::Stopped)));
        assert!(shared.take_data_file().is_none());
        drop(db);
    }

    /// A log file that records each call made to it.
    #[derive(Default)]
    struct CallLog {
        calls: Vec<String>,
        bytes: Vec<u8>,
    }

    impl LogFile for &mut CallLog {
        fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
            Ok(self.bytes.clone())
        }
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.calls
                .push(format!("append {}", String::from_utf8_lossy(bytes)));
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            self.calls.push("sync".into());
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            self.bytes.truncate(len as usize);
            Ok(())
        }
        fn replace(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.calls
                .push(format!("replace {}", String::from_utf8_lossy(bytes)));
            self.bytes = bytes.to_vec();
            Ok(())
        }
    }

    fn append(number: u64, records: &str, sync: bool) -> LogJob {
        LogJob::Append {
            number,
            records: records.as_bytes().to_vec(),
            sync,
            then_send: Vec::new(),
        }
    }

    /// Consecutive appends leave in one write (a busy leader queues one per proposal), in
    /// order around a rewrite of the file, with one sync for the batch.
    #[test]
    fn a_batch_of_appends_is_one_write_and_one_sync_in_order_around_a_rewrite() {
        let mut log = CallLog::default();
        let metrics = crate::metrics::Metrics::for_tests(1);
        let jobs = vec![
            append(1, "a", true),
            append(2, "b", true),
            LogJob::Replace(b"IMG".to_vec()),
            append(3, "", false),
            append(4, "c", false),
            append(5, "d", true),
        ];
        let last = write_log_batch(&mut &mut log, jobs, &Transport::without_peers(), &metrics);
        assert_eq!(last, Ok(Some(5)));
        assert_eq!(log.calls, ["append ab", "replace IMG", "append cd", "sync"]);
        assert_eq!(log.bytes, b"IMGcd");
    }
}
