//! The replicated server as a sans-IO state machine (quinn-proto's shape): the raft-rs
//! `RawNode`, the proposals waiting for their entries, ReadIndex batching, the apply of
//! committed entries into the state machine ([`crate::state`]), the snapshot and log
//! compaction policy, and leader tracking.
//!
//! Inputs are `handle_*` calls; time comes in as ticks ([`Server::handle_tick`]). Outputs are
//! taken with [`Server::poll_output`] until it returns None, and the executor (detcd-net in
//! production, the core-only simulator in tests) carries them out and reports back:
//!
//! | output | the executor | then calls |
//! |---|---|---|
//! | [`Output::Send`] | hands the messages to the peer transport | `handle_unreachable`, `handle_snapshot_status` on failures |
//! | [`Output::AppendLog`] | appends the records to the log file, syncs if asked (group commit allowed), then sends `then_send` | `handle_persisted(number)` |
//! | [`Output::ReplaceLog`] | replaces the log file atomically, in order with the appends | nothing |
//! | [`Output::Commit`] | commits the redb transaction durably, off the async workers | `handle_committed(applied)` |
//! | [`Output::BuildSnapshot`] | writes the snapshot file of the state machine's read view and syncs it, off the async workers | `handle_snapshot_built(its SnapshotRef)` |
//! | [`Output::InstallSnapshot`] | installs the snapshot file the leader sent (its transport stored it before raft saw the message), off the async workers | `handle_snapshot_installed(result)` |
//! | [`Output::Response`], [`Output::ReadReady`] | answers the waiting client | nothing |
//!
//! Each Ready is handled in raft-rs's documented order with its async-persistence API
//! (`advance_append_async` / `on_persist_ready`), so a leader sends its appends while its
//! own log write is still on the disk (raft thesis 10.2.1), and messages that must follow
//! persistence (votes, append responses) travel with the log write they wait for.
//!
//! Nothing here blocks, spawns, locks or reads a clock. A storage failure is [`Fatal`].

use crate::membership::{MemberChange, MemberError};
use crate::mvcc::MvccError;
use crate::proto::detcdpb::{
    internal_request::Request, ConfChangeContext, InternalRequest, MemberAttributes, SnapshotRef,
};
use crate::proto::etcdserverpb as pb;
use crate::raft_log::RaftLog;
use crate::state::{
    Applied, Fatal, Installed, KvState, PendingCommit, SnapshotInstall, SnapshotSource, StateViews,
};
use prost::Message as _;
use raft::prelude::*;
use raft::{RawNode, StateRole};
use std::collections::{BTreeMap, VecDeque};

#[cfg(test)]
mod tests;

/// Ticks to wait after a failed snapshot build before the next (100 heartbeats).
const SNAPSHOT_RETRY_TICKS: u64 = 100;

/// Proposals held while no leader is known; more are refused with `NoLeader` at once.
pub const MAX_HELD_PROPOSALS: usize = 4096;
/// Reads waiting for a leader, for their read index, or for apply to reach it.
pub const MAX_PENDING_READS: usize = 16384;
/// The leader proposes at most this many lease revokes a second (etcd's leaseRevokeRate).
const LEASE_REVOKES_PER_SECOND: u64 = 1000;
/// How often the leader looks for due v2 TTL keys (etcd's SyncTicker, 500 ms).
const V2_SYNC_MS: u64 = 500;
/// Leases checkpointed in one proposal at most (etcd's maxLeaseCheckpointBatchSize).
const MAX_LEASE_CHECKPOINTS: usize = 1000;
/// Readies handled per input at most (each drains raft's queues, so this is rarely reached).
const MAX_READIES_PER_INPUT: usize = 16;
/// ReadIndex rounds in flight at once. etcd's linearizableReadLoop keeps one: the reads that
/// arrive meanwhile share the next round, so a busy leader sends a heartbeat round per batch
/// of reads, not per few reads (etcdserver/v3_server.go).
const MAX_READ_ROUNDS_IN_FLIGHT: usize = 1;

/// Why a proposal or read got no answer from the state machine. The texts are etcd's
/// (api/v3rpc/rpctypes), clients match on them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The state machine refused the request (compacted revision, ...).
    #[error("{0}")]
    Refused(#[from] RefusedBy),
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The leader changed while the request was in flight; it may or may not have been applied.
    /// Reads and membership changes only: a write waits for its entry instead.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// A write's entry did not apply within the request timeout; it may still apply later.
    /// etcd's texts: after a leader change, "possibly due to previous leader failure"
    /// (etcdserver/server.go parseProposeCtxErr).
    #[error("{}", if *.leader_failed { "etcdserver: request timed out, possibly due to previous leader failure" } else { "etcdserver: request timed out" })]
    TimedOut { leader_failed: bool },
    /// More reads are waiting than [`MAX_PENDING_READS`] (etcd's ErrTooManyRequests, which it
    /// returns when apply falls too far behind commit).
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// A membership change reached a member that is not the leader (the leader's ID): the
    /// executor forwards it there (etcd's ErrNotLeader text).
    #[error("etcdserver: not leader")]
    NotLeader(u64),
}

/// An MVCC refusal, kept as its text and gRPC code (MvccError is not Clone).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RefusedBy {
    pub message: String,
    pub grpc_code: i32,
}

impl RefusedBy {
    /// etcd's ErrGRPCBadLeaderTransferee (FailedPrecondition): MoveLeader's target is not a
    /// voting member (etcdserver/server.go MoveLeader).
    pub fn bad_leader_transferee() -> RefusedBy {
        RefusedBy {
            message: "etcdserver: bad leader transferee".into(),
            grpc_code: 9,
        }
    }

    /// etcd's ErrUnhealthy: a stopping leader found no connected voter to hand leadership
    /// to (etcdserver/errors.go, server.go TransferLeadership).
    pub fn unhealthy() -> RefusedBy {
        RefusedBy {
            message: "etcdserver: unhealthy cluster".into(),
            grpc_code: 2,
        }
    }

    /// etcd's ErrTimeoutLeaderTransfer, which its togRPCError does not map, so clients get it
    /// with code Unknown (etcdserver/errors.go, api/v3rpc/util.go).
    pub fn leader_transfer_timeout() -> RefusedBy {
        RefusedBy {
            message: "etcdserver: request timed out, leader transfer took too long".into(),
            grpc_code: 2,
        }
    }
}

impl From<MemberError> for RefusedBy {
    fn from(e: MemberError) -> Self {
        RefusedBy {
            grpc_code: e.grpc_code(),
            message: e.to_string(),
        }
    }
}

impl From<MvccError> for RefusedBy {
    fn from(e: MvccError) -> Self {
        RefusedBy {
            grpc_code: e.grpc_code(),
            message: e.to_string(),
        }
    }
}

/// What the executor must do next. See the module docs for who reports what back.
#[derive(Debug)]
pub enum Output {
    Send(Vec<Message>),
    /// Append `records` (encoded log records, possibly none) to the log file, sync it when
    /// `sync`, then send `then_send` (votes, append answers: raft requires them to follow
    /// the write) and report `handle_persisted(number)`. Reports must come in order;
    /// reporting a number reports every smaller one.
    AppendLog {
        number: u64,
        records: Vec<u8>,
        sync: bool,
        then_send: Vec<Message>,
    },
    /// Replace the whole log file with `image`, atomically and durably, after every append
    /// asked for before it.
    ReplaceLog {
        image: Vec<u8>,
    },
    /// Commit the transaction durably, then report `handle_committed(applied)`.
    Commit(Box<PendingCommit>),
    /// Write the snapshot file of this source, durably (off the driver: it reads the whole
    /// store; [`SnapshotSource::write_to`]), then report `handle_snapshot_built`. Asked for
    /// only when raft needs a snapshot for a lagging follower; the transport sends that file
    /// beside the MsgSnapshot naming it.
    BuildSnapshot(Box<SnapshotSource>),
    /// Install the leader's snapshot file into the data file (off the driver: it writes the
    /// whole store; [`SnapshotInstall::run`]), then report `handle_snapshot_installed`.
    InstallSnapshot(Box<SnapshotInstall>),
    /// Copy this data file compactly (off the driver; it stays readable meanwhile) and
    /// report `handle_defragmented` with the copy that replaces it.
    Defragment(std::sync::Arc<redb::Database>),
    /// The point-in-time copy of the state machine asked for with `id`
    /// ([`Server::handle_state_copy`]): a read view of everything applied, durable, that the
    /// executor reads off the driver (Maintenance.Hash and Snapshot).
    StateCopy {
        id: u64,
        source: Box<SnapshotSource>,
    },
    /// The answer to proposal `id`.
    Response {
        id: u64,
        result: Result<Applied, RequestError>,
    },
    /// Read `id` may now be served from local state (linearizably), or failed.
    ReadReady {
        id: u64,
        result: Result<(), RequestError>,
    },
    /// The member list changed (applied, or installed with a snapshot): the peer transport
    /// now talks to exactly these members, (ID, peer URLs), this one included.
    MembershipChanged(Vec<(u64, Vec<String>)>),
    /// This member was removed from the cluster: the executor stops it (after a moment, so
    /// the messages telling the others the removal committed get out).
    Removed,
    /// Writes applied since the last `Events`: their changes in revision order (Watch
    /// publishes them). The state views already show them.
    Events(Vec<crate::proto::mvccpb::Event>),
    /// A snapshot from the leader replaced the state machine, now at this store revision:
    /// its changes have no events, so every watcher catches up from the store.
    StoreReplaced(i64),
    /// v2 keys watchers (waiting reads registered with `V2Store::watch` on this member)
    /// fired by the writes just applied, each with its event.
    V2Fired(Vec<(u64, crate::v2store::Event)>),
}

/// Deliberate bugs for proving the simulators' checkers can fail. All false in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mutations {
    /// Every ReadIndex batch and retry is sent under one context (etcd issue 20418: a late
    /// answer for an earlier batch then releases a later one at an older index).
    pub reuse_read_context: bool,
    /// This member skips applying the entry at this index (replicas diverge).
    pub skip_apply_at: Option<u64>,
    /// A restarted member forgets its vote but keeps its term (it may vote twice in a term).
    pub forget_vote: bool,
    /// This member's member table misses other members' promotions (raft's configuration
    /// still applies them): its member list differs from the others'.
    pub stale_member_table: bool,
    /// The leader revokes leases once this percentage of their TTL is left (0: at expiry).
    pub early_lease_expiry_percent: u64,
}

/// etcd's rule for promoting a learner: its raft log matches at least this share of the
/// leader's (etcdserver/server.go, readyPercent).
const LEARNER_READY_PERCENT: u64 = 90;

/// How the server is set up; times are in ticks (one tick per heartbeat interval).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub id: u64,
    /// Election timeout in ticks (raft's `election_tick`; the heartbeat is one tick).
    pub election_ticks: usize,
    /// Applied entries between snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot so a slightly slow follower catches up from the log
    /// (etcd's snapshotCatchUpEntries, 5000).
    pub catch_up_entries: u64,
    /// Applied rows held in the open transaction before it is committed ahead of the next
    /// tick (etcd's backend batch limit, 10,000).
    pub max_uncommitted_rows: usize,
    /// A proposal or read waits this long for a leader before it fails with `NoLeader` (a
    /// read waiting to be sent while there is a leader: `TimedOut`).
    pub hold_ticks: u64,
    /// A ReadIndex not answered within this many ticks is sent again with a fresh context
    /// (etcd's readIndexRetryTime, 500 ms).
    pub read_retry_ticks: u64,
    /// The attributes this member publishes through raft once it has a leader.
    pub attributes: MemberAttributes,
    /// Seed of the request ID counter: the start time in milliseconds, as etcd's idutil.
    pub start_unix_ms: u64,
    /// Seed of the randomized election timeouts (raft-rs draws them from the OS otherwise,
    /// which would make a simulation depend on more than its seed).
    pub election_seed: u64,
    /// `--strict-reconfig-check`: refuse membership changes that could cost the quorum.
    pub strict_reconfig_check: bool,
    /// `--max-learners` (etcd 3.6; 3.4 allows 1).
    pub max_learners: usize,
    /// How long every voter must have been connected to the leader for a strict
    /// reconfiguration to count the cluster healthy (etcd's HealthInterval, 5 s), in ticks.
    pub health_ticks: u64,
    /// `--feature-gates=AutoPromoteLearners=true`: the leader promotes a learner once it is
    /// in sync, under the same checks as `member promote` (etcd issue 15107).
    pub auto_promote_learners: bool,
    /// One tick in milliseconds (`--heartbeat-interval`): the leases' clock.
    pub tick_ms: u64,
    /// `--experimental-enable-lease-checkpoint`: the leader checkpoints leases' remaining TTL
    /// this often (etcd: 5 min), so a new leader does not count them afresh. None: off.
    pub lease_checkpoint_interval_ms: Option<u64>,
    /// `--pre-vote`: raft's pre-vote phase (etcd 3.5's default, on).
    pub pre_vote: bool,
    pub mutations: Mutations,
}

impl ServerConfig {
    /// etcd's defaults around the given member and timing.
    pub fn new(id: u64, election_ticks: usize, attributes: MemberAttributes) -> ServerConfig {
        ServerConfig {
            id,
            election_ticks,
            snapshot_count: 100_000,
            catch_up_entries: 5000,
            max_uncommitted_rows: 10_000,
            hold_ticks: 50,
            read_retry_ticks: 5,
            attributes,
            start_unix_ms: 0,
            election_seed: id,
            strict_reconfig_check: true,
            max_learners: 1,
            health_ticks: 50,
            auto_promote_learners: false,
            tick_ms: 100,
            lease_checkpoint_interval_ms: None,
            pre_vote: true,
            mutations: Mutations::default(),
        }
    }
}

/// Raft and apply progress, for response headers, Status and the simulators' checkers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub is_leader: bool,
    /// Once this member has seen a leader (or restarted from its own log), a peer from
    /// another cluster is refused instead of being a reason to exit.
    pub has_had_leader: bool,
    /// Snapshots from a leader installed since start.
    pub snapshots_installed: u64,
    /// The member this one voted for in `term` (0: none).
    pub vote: u64,
    /// ReadIndex batches sent again (after a leader change or unanswered), each under a
    /// fresh context.
    pub read_retries: u64,
    /// This member is a learner in raft's configuration (it does not vote).
    pub is_learner: bool,
    /// This member was removed from the cluster.
    pub removed: bool,
    /// This member's name and client URLs are in the replicated member list: it serves
    /// clients as a published member (etcd's ReadyNotify).
    pub published: bool,
    /// Times a new leader (not "none") was seen since start: etcd's
    /// `etcd_server_leader_changes_seen_total` (etcdserver/raft.go counts a soft state whose
    /// leader is set and differs from the last one seen, "none" included).
    pub leader_changes: u64,
    /// Client proposals (writes and membership changes) waiting for their entry or for a
    /// leader: etcd's `etcd_server_proposals_pending`.
    pub proposals_pending: u64,
    /// Client proposals that failed without an answer from the state machine (no leader,
    /// timed out, leader changed) since start: etcd's `etcd_server_proposals_failed_total`.
    pub proposals_failed: u64,
    /// A snapshot from the leader is being installed: etcd's
    /// `etcd_server_snapshot_apply_in_progress_total`.
    pub installing_snapshot: bool,
}

/// Request IDs unique across members and restarts, as etcd's idutil: the member's low 16
/// bits, then a counter that starts at the start time in milliseconds.
#[derive(Debug, Clone)]
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

    pub fn next_id(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        self.prefix | (self.counter & 0xffff_ffff_ffff)
    }
}

/// A proposal in raft, waiting for its entry to apply.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// The tick it was proposed at: it times out `hold_ticks` later (the request timeout).
    since_tick: u64,
    /// [`Server::leader_epoch`] when it was proposed.
    leader_epoch: u64,
    /// A membership change: failed at once when leadership moves, since the leader that
    /// proposed it is gone (the executor asks the new one). Writes wait for their entry,
    /// as etcd's do: a write forwarded while no leader was known is not lost by the election.
    membership: bool,
}

struct HeldProposal {
    id: u64,
    data: Vec<u8>,
    since_tick: u64,
}

/// A MoveLeader waiting for its target to lead.
#[derive(Debug, Clone, Copy)]
struct LeaderMove {
    id: u64,
    target: u64,
    /// The leader it started from, and when (ticks), for the log line at the end.
    from: u64,
    since_tick: u64,
}

/// Reads sent to raft under one context.
struct ReadBatch {
    ids: Vec<u64>,
    sent_tick: u64,
}

pub struct Server<V: StateViews> {
    cfg: ServerConfig,
    raw: RawNode<RaftLog>,
    state: KvState<V>,
    ids: IdGen,
    tick: u64,
    /// The executor's wall clock at the last tick ([`Server::handle_wall_clock`]).
    wall_clock_ms: Option<u64>,
    outputs: VecDeque<Output>,
    /// Proposals in raft, by request id, waiting for their entry to apply.
    waiting: BTreeMap<u64, Waiting>,
    /// Leader changes seen so far (a proposal records it, to tell a timeout after one).
    leader_epoch: u64,
    held: VecDeque<HeldProposal>,
    /// Reads not yet sent to raft (no leader yet, or a round in flight before them), with the
    /// tick they arrived.
    pending_reads: Vec<(u64, u64)>,
    /// Reads sent to raft, by the context's counter.
    read_batches: BTreeMap<u64, ReadBatch>,
    /// A leadership offer (MsgTimeoutNow) that came while a snapshot install's log write was
    /// not durable yet ([`Self::campaign_would_read_compacted_log`]).
    held_timeout_now: Option<Message>,
    /// Reads whose read index is known, waiting for apply to reach it.
    indexed_reads: Vec<(u64, Vec<u64>)>,
    next_read_ctx: u64,
    /// Numbers of the Readies handed out for persistence and not yet reported.
    persisting: VecDeque<u64>,
    /// Committed entries waiting for a commit in flight to finish (redb has one writer).
    to_apply: VecDeque<Vec<Entry>>,
    /// Applied index at the last log compaction (or snapshot install).
    last_compaction_index: u64,
    /// `--snapshot-count` entries were applied since: the log is compacted once the state
    /// machine is durable. No snapshot is built for it: the data file is the state machine.
    compaction_due: bool,
    /// Raft asked for a snapshot to send to a lagging follower; one is built once the state
    /// machine is durable.
    snapshot_wanted: bool,
    /// No snapshot is built before this tick (after a failed build).
    next_build_tick: u64,
    /// A snapshot being built: its index, term and configuration.
    building: Option<(u64, u64, ConfState)>,
    /// A Ready whose snapshot from the leader is being installed: the rest of it (committed
    /// entries, new entries, persisted messages) waits for the install.
    installing: Option<Ready>,
    /// A defragmentation of the data file asked for by a client, and how far it is.
    defrag: Defrag,
    /// MoveLeader requests waiting for their target to lead.
    leader_moves: Vec<LeaderMove>,
    /// Requests for a copy of the state machine ([`Output::StateCopy`]) waiting for
    /// everything applied to be durable.
    state_copies: Vec<u64>,
    attributes_published: bool,
    ticks_since_publish: usize,
    /// The tick since which the transport has been connected to each peer (absent: not
    /// connected), for `--strict-reconfig-check`'s health rule.
    peer_active_since: BTreeMap<u64, u64>,
    /// A member that joined a running cluster and has not installed the leader's snapshot
    /// yet: it knows no raft configuration, so it must not apply entries.
    awaiting_first_snapshot: bool,
    status: Status,
    /// xorshift64 state for election timeouts; the timeout last set, and the (term, role,
    /// leader) it was set for.
    election_rng: u64,
    election_timeout: usize,
    election_epoch: (u64, StateRole, u64),
}

impl<V: StateViews> Server<V> {
    /// A server over a loaded raft log and the state machine it describes. `restarted` says
    /// the member ran before (it counts as having had a leader).
    pub fn new(
        cfg: ServerConfig,
        log: RaftLog,
        state: KvState<V>,
        restarted: bool,
        logger: &slog::Logger,
    ) -> Result<Server<V>, Fatal> {
        let (mut log, mut state) = (log, state);
        state.set_min_lease_ttl(crate::lease::min_lease_ttl(
            cfg.election_ticks as u64,
            cfg.tick_ms,
        ));
        if restarted && cfg.mutations.forget_vote {
            log.forget_vote();
        }
        let applied = state.applied().max(log.compacted_index());
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: cfg.pre_vote,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| Fatal::new("raft configuration", e))?;
        let cs = log.conf_state();
        let awaiting_first_snapshot =
            log.compacted_index() == 0 && cs.voters.is_empty() && cs.learners.is_empty();
        let raw =
            RawNode::new(&raft_cfg, log, logger).map_err(|e| Fatal::new("starting raft", e))?;
        let ids = IdGen::new(cfg.id, cfg.start_unix_ms);
        let status = Status {
            id: cfg.id,
            applied,
            has_had_leader: restarted,
            ..Default::default()
        };
        let mut server = Server {
            election_rng: cfg.election_seed | 1,
            election_timeout: 0,
            election_epoch: (u64::MAX, StateRole::Follower, 0),
            last_compaction_index: applied,
            cfg,
            raw,
            state,
            ids,
            tick: 0,
            wall_clock_ms: None,
            outputs: VecDeque::new(),
            waiting: BTreeMap::new(),
            leader_epoch: 0,
            held: VecDeque::new(),
            pending_reads: Vec::new(),
            read_batches: BTreeMap::new(),
            held_timeout_now: None,
            indexed_reads: Vec::new(),
            next_read_ctx: 1,
            persisting: VecDeque::new(),
            to_apply: VecDeque::new(),
            compaction_due: false,
            snapshot_wanted: false,
            next_build_tick: 0,
            building: None,
            installing: None,
            defrag: Defrag::Idle,
            leader_moves: Vec::new(),
            state_copies: Vec::new(),
            attributes_published: false,
            ticks_since_publish: 0,
            peer_active_since: BTreeMap::new(),
            awaiting_first_snapshot: false,
            status,
        };
        server.awaiting_first_snapshot = awaiting_first_snapshot;
        server.pin_election_timeout();
        // A joining learner refuses what learners refuse from the start (the rest of the
        // status comes with the first Ready).
        server.status.is_learner = server.is_learner();
        Ok(server)
    }

    /// raft-rs redraws its election timeout in [election, 2 * election) from the OS on every
    /// reset (a new term, role or leader): draw it again from the seeded generator, so the
    /// timing is a function of the seed.
    fn pin_election_timeout(&mut self) {
        let r = &self.raw.raft;
        let epoch = (r.term, r.state, r.leader_id);
        if epoch == self.election_epoch && r.randomized_election_timeout() == self.election_timeout
        {
            return;
        }
        self.election_epoch = epoch;
        let mut x = self.election_rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.election_rng = x;
        let base = self.cfg.election_ticks;
        self.election_timeout = base + (x % base as u64) as usize;
        self.raw
            .raft
            .set_randomized_election_timeout(self.election_timeout);
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn state(&self) -> &KvState<V> {
        &self.state
    }

    /// The next output to carry out, or None when there is nothing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---- inputs ----

    /// One heartbeat interval passed.
    pub fn handle_tick(&mut self) -> Result<(), Fatal> {
        if self.status.removed {
            return Ok(()); // see `drive`: raft is not driven any more
        }
        self.tick += 1;
        if !self.campaign_would_read_compacted_log() {
            self.raw.tick();
        }
        self.ticks_since_publish += 1;
        if !self.attributes_published
            && self.raw.raft.leader_id != 0
            && self.ticks_since_publish >= self.cfg.election_ticks
        {
            self.ticks_since_publish = 0;
            self.publish_attributes();
        }
        self.expire_held();
        self.retry_reads();
        self.tick_leases();
        self.tick_v2_ttl();
        if self.cfg.auto_promote_learners
            && self.status.is_leader
            && self.tick.is_multiple_of(self.cfg.election_ticks as u64)
        {
            self.auto_promote();
        }
        // etcd's backend commits its batch every 100 ms: make the applied effects durable.
        self.request_commit()?;
        self.drive()
    }

    /// Messages from peers (already checked to come from members of this cluster), handled
    /// as one batch: one Ready for all of them.
    pub fn handle_messages(&mut self, msgs: Vec<Message>) -> Result<(), Fatal> {
        if self.status.removed {
            return Ok(());
        }
        for msg in msgs {
            if msg.get_msg_type() == MessageType::MsgTimeoutNow
                && self.campaign_would_read_compacted_log()
            {
                // Taken up once the install's log write is durable (`drive`): raft-rs's
                // leader would not send it again before its transfer times out.
                self.held_timeout_now = Some(msg);
                continue;
            }
            // raft rejects stale or odd messages itself; that is not the member's fault.
            let _ = self.raw.step(msg);
        }
        self.drive()
    }

    /// The transport could not reach peer `id`.
    pub fn handle_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// A snapshot sent to `id` arrived (`ok`) or was lost (queue full, connection failed).
    pub fn handle_snapshot_status(&mut self, id: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
    }

    /// The snapshot file at `index` could not be read, or a follower found it damaged: it is
    /// no longer offered to raft, and the next follower that needs one gets a new build.
    pub fn handle_snapshot_unusable(&mut self, index: u64) {
        tracing::warn!(
            index,
            "snapshot file unusable; a new one will be built when needed"
        );
        self.raw.mut_store().forget_snapshot(index);
    }

    /// The transport's connection to peer `id` came up (`active`) or went down.
    pub fn handle_peer_active(&mut self, id: u64, active: bool) {
        if active {
            self.peer_active_since.entry(id).or_insert(self.tick);
        } else {
            self.peer_active_since.remove(&id);
        }
    }

    /// A membership change a client asked for (etcd's Cluster service). Returns the request
    /// id its [`Output::Response`] carries: `Applied::MemberChanged` once it has applied
    /// here, or why not. Only the leader takes changes, since only it knows the peers'
    /// health and a learner's progress: elsewhere the answer is
    /// [`RequestError::NotLeader`], and the executor forwards the change to the leader.
    ///
    /// `strict` is `--strict-reconfig-check` of the member the client asked (etcd runs its
    /// may* checks with that member's flag); the checks themselves use what the leader knows.
    pub fn handle_member_change(
        &mut self,
        change: MemberChange,
        strict: bool,
    ) -> Result<u64, Fatal> {
        let id = self.ids.next_id();
        if self.status.removed {
            self.outputs.push_back(Output::Response {
                id,
                result: Err(RequestError::NoLeader),
            });
            return Ok(id);
        }
        let checked = self.check_member_change(&change, strict);
        if checked.is_ok() && change == MemberChange::Remove(self.cfg.id) {
            // raft-rs cannot run a leader that removed itself (its progress is gone, and
            // the next append answer panics in maybe_commit): once the removal passed the
            // checks, hand leadership to a healthy, caught-up voter; the executor then
            // forwards the removal to it.
            let result = match self.transfer_target() {
                Some(to) => {
                    tracing::info!(
                        "transferring leadership to {} before removing this member",
                        crate::ids::format_id(to)
                    );
                    self.raw.transfer_leader(to);
                    Err(RequestError::NotLeader(to))
                }
                None => Err(RequestError::Refused(MemberError::Unhealthy.into())),
            };
            self.outputs.push_back(Output::Response { id, result });
            self.drive()?;
            return Ok(id);
        }
        match checked {
            Err(e) => self
                .outputs
                .push_back(Output::Response { id, result: Err(e) }),
            Ok(()) => {
                tracing::info!("proposing membership change: {change}");
                let proposed = match &change {
                    MemberChange::Update(u) => {
                        let data = InternalRequest {
                            id,
                            request: Some(Request::MemberUpdate(u.clone())),
                            header: None,
                        }
                        .encode_to_vec();
                        self.raw.propose(vec![], data)
                    }
                    _ => {
                        let (cc, context) = conf_change_for(id, &change);
                        let mut cc = cc;
                        cc.context = context.into();
                        self.raw.propose_conf_change(vec![], cc)
                    }
                };
                match proposed {
                    Ok(()) => {
                        let w = self.waiting_since_now(true);
                        self.waiting.insert(id, w);
                    }
                    Err(_) => self.outputs.push_back(Output::Response {
                        id,
                        result: Err(RequestError::NoLeader),
                    }),
                }
            }
        }
        self.drive()?;
        Ok(id)
    }

    /// etcd's checks before proposing a membership change (etcdserver/server.go: AddMember,
    /// RemoveMember, PromoteMember with mayAddMember, mayRemoveMember, mayPromoteMember).
    fn check_member_change(&self, change: &MemberChange, strict: bool) -> Result<(), RequestError> {
        let leader = self.raw.raft.leader_id;
        if leader == 0 {
            return Err(RequestError::NoLeader);
        }
        if !self.status.is_leader {
            return Err(RequestError::NotLeader(leader));
        }
        let refused = |e: MemberError| RequestError::Refused(e.into());
        let members = self.state.views().members(|m| m.clone());
        members
            .validate(change, self.cfg.max_learners)
            .map_err(refused)?;
        if !matches!(change, MemberChange::Update(_)) && self.raw.raft.has_pending_conf() {
            return Err(refused(MemberError::ChangeInProgress));
        }
        match change {
            MemberChange::Add(m) => {
                if strict && !m.is_learner && !members.ready_to_add_voter() {
                    return Err(refused(MemberError::NotEnoughStarted));
                }
                if strict && !self.connected_to_all_voters(&members) {
                    return Err(refused(MemberError::Unhealthy));
                }
            }
            MemberChange::Remove(id) => {
                let learner = members.get(*id).is_some_and(|m| m.is_learner);
                if strict && !learner {
                    if !members.ready_to_remove_voter(*id) {
                        return Err(refused(MemberError::NotEnoughStarted));
                    }
                    // A member that is down is safe to remove: it is not in the active quorum.
                    let down = *id != self.cfg.id && !self.peer_active_since.contains_key(id);
                    let voters = members.voters().count();
                    let active = members
                        .voters()
                        .filter(|m| m.id == self.cfg.id || self.healthy_peer(m.id))
                        .count();
                    if !down && active.saturating_sub(1) < 1 + voters.saturating_sub(1) / 2 {
                        return Err(refused(MemberError::Unhealthy));
                    }
                }
            }
            MemberChange::Promote(id) => {
                if !self.learner_ready(*id) {
                    return Err(refused(MemberError::LearnerNotReady));
                }
                if strict && !members.ready_to_promote() {
                    return Err(refused(MemberError::NotEnoughStarted));
                }
            }
            MemberChange::Update(_) => {}
        }
        Ok(())
    }

    /// AutoPromoteLearners: proposes the promotion of the first learner that `member promote`
    /// would promote now (one at a time: raft takes one configuration change at once). No
    /// client waits for it; it is applied and logged as any promotion.
    fn auto_promote(&mut self) {
        let learners: Vec<u64> = self
            .state
            .views()
            .members(|m| m.members().filter(|m| m.is_learner).map(|m| m.id).collect());
        for id in learners {
            let change = MemberChange::Promote(id);
            if self
                .check_member_change(&change, self.cfg.strict_reconfig_check)
                .is_err()
            {
                continue;
            }
            let (mut cc, context) = conf_change_for(self.ids.next_id(), &change);
            cc.context = context.into();
            if self.raw.propose_conf_change(vec![], cc).is_ok() {
                tracing::info!(
                    "promoting learner {}: it is in sync with the leader (AutoPromoteLearners)",
                    crate::ids::format_id(id)
                );
            }
            return;
        }
    }

    /// etcd's TransferLeadership as a member stops (etcdserver/server.go `Stop`): the leader
    /// of a cluster with other voters hands leadership to the best connected of them
    /// ([`Self::transfer_target`]; etcd's longestConnected) as
    /// [`Self::handle_move_leader`] does, so the cluster need not wait an election timeout
    /// for a new leader. Anywhere else the answer (the returned request id's
    /// [`Output::Response`]) is `Applied::LeaderMoved` at once, with etcd's "skipped" log
    /// line; a leader with no connected voter gets [`RefusedBy::unhealthy`].
    pub fn handle_transfer_for_stop(&mut self) -> Result<u64, Fatal> {
        let me = crate::ids::format_id(self.cfg.id);
        let leader = crate::ids::format_id(self.raw.raft.leader_id);
        let skipped = if self.status.removed || !self.status.is_leader {
            tracing::info!(
                local_member_id = %me,
                current_leader_member_id = %leader,
                "skipped leadership transfer; local server is not leader"
            );
            Some(Ok(crate::state::Applied::LeaderMoved))
        } else if self.raw.raft.prs().conf().voters().ids().len() < 2 {
            tracing::info!(
                local_member_id = %me,
                current_leader_member_id = %leader,
                "skipped leadership transfer for single voting member cluster"
            );
            Some(Ok(crate::state::Applied::LeaderMoved))
        } else {
            match self.transfer_target() {
                Some(target) => return self.handle_move_leader(target),
                None => Some(Err(RequestError::Refused(RefusedBy::unhealthy()))),
            }
        };
        let id = self.ids.next_id();
        if let Some(result) = skipped {
            self.outputs.push_back(Output::Response { id, result });
        }
        Ok(id)
    }

    /// etcd's MoveLeader (api/v3rpc/maintenance.go, etcdserver/server.go): on the leader,
    /// hands leadership to `target` with raft's leader transfer and answers (the returned
    /// request id's [`Output::Response`]) `Applied::LeaderMoved` once this member sees
    /// `target` lead. Refused with [`RequestError::NotLeader`] off the leader, with
    /// [`RefusedBy::bad_leader_transferee`] when `target` is not a voting member, and with
    /// [`RefusedBy::leader_transfer_timeout`] when it does not lead within the request
    /// timeout (`hold_ticks`; etcd waits as long as the client's deadline, and raft-rs, as
    /// etcd's raft, gives up the transfer itself after an election timeout). A target that
    /// already leads answers at once, as in etcd.
    pub fn handle_move_leader(&mut self, target: u64) -> Result<u64, Fatal> {
        let id = self.ids.next_id();
        let leader = self.raw.raft.leader_id;
        let refused = if self.status.removed || !self.status.is_leader {
            Some(RequestError::NotLeader(leader))
        } else if self
            .state
            .views()
            .members(|m| m.get(target).is_none_or(|m| m.is_learner))
        {
            Some(RequestError::Refused(RefusedBy::bad_leader_transferee()))
        } else {
            None
        };
        if let Some(e) = refused {
            self.outputs
                .push_back(Output::Response { id, result: Err(e) });
            return Ok(id);
        }
        tracing::info!(
            "{} starts leadership transfer from {} to {}",
            crate::ids::format_id(self.cfg.id),
            crate::ids::format_id(leader),
            crate::ids::format_id(target)
        );
        self.leader_moves.push(LeaderMove {
            id,
            target,
            from: leader,
            since_tick: self.tick,
        });
        self.raw.transfer_leader(target);
        self.drive()?;
        Ok(id)
    }

    /// A client asked for a point-in-time copy of this member's state machine (etcd's
    /// Maintenance.Snapshot, and detcd's Hash over the same content). Returns the id that
    /// its [`Output::StateCopy`] carries: it comes once everything applied is durable (at
    /// once if it is; otherwise after the commit this asks for), so it is a read
    /// transaction over exactly the applied state. Applying goes on meanwhile.
    pub fn handle_state_copy(&mut self) -> Result<u64, Fatal> {
        let id = self.ids.next_id();
        self.state_copies.push(id);
        self.maybe_state_copy()?;
        Ok(id)
    }

    fn maybe_state_copy(&mut self) -> Result<(), Fatal> {
        if self.state_copies.is_empty() || self.installing.is_some() {
            return Ok(());
        }
        if self.state.is_committing() {
            return Ok(()); // handle_committed comes back here (a defragmentation too)
        }
        if self.state.has_open_txn() || self.state.durable_applied() != self.state.applied() {
            return self.request_commit();
        }
        for id in std::mem::take(&mut self.state_copies) {
            let source = Box::new(self.state.snapshot_source()?);
            self.outputs.push_back(Output::StateCopy { id, source });
        }
        Ok(())
    }

    /// Answers the MoveLeaders whose target now leads, and fails those that waited longer
    /// than the request timeout.
    fn settle_leader_moves(&mut self) {
        if self.leader_moves.is_empty() {
            return;
        }
        let (leader, tick, hold) = (self.raw.raft.leader_id, self.tick, self.cfg.hold_ticks);
        let (me, tick_ms) = (self.cfg.id, self.cfg.tick_ms);
        let outputs = &mut self.outputs;
        self.leader_moves.retain(|m| {
            let result = if m.target == leader {
                tracing::info!(
                    "{} finished leadership transfer from {} to {} (took {}ms)",
                    crate::ids::format_id(me),
                    crate::ids::format_id(m.from),
                    crate::ids::format_id(m.target),
                    (tick - m.since_tick) * tick_ms
                );
                Ok(Applied::LeaderMoved)
            } else if tick - m.since_tick >= hold {
                Err(RequestError::Refused(RefusedBy::leader_transfer_timeout()))
            } else {
                return true;
            };
            outputs.push_back(Output::Response { id: m.id, result });
            false
        });
    }

    /// A voter to hand leadership to: one connected now (raft-rs drops proposals while a
    /// transfer is pending, so a dead target would stall writes until the transfer times
    /// out), preferring those connected for the whole health interval, then the most caught
    /// up. A peer connected for less than the interval still qualifies: the removal's own
    /// checks have passed (or `--strict-reconfig-check=false` waived them, as etcd's e2e
    /// TestCtlV3MemberRemove does right after start-up), and etcd would not refuse here.
    fn transfer_target(&self) -> Option<u64> {
        let prs = self.raw.raft.prs();
        let voters = prs.conf().voters().ids();
        voters
            .iter()
            .filter(|id| *id != self.cfg.id && self.peer_active_since.contains_key(id))
            .filter_map(|id| {
                let p = prs.get(id)?;
                Some((self.healthy_peer(id), p.matched, std::cmp::Reverse(id), id))
            })
            .max()
            .map(|(_, _, _, id)| id)
    }

    /// Connected to the peer for the whole health interval (etcd's transport.ActiveSince).
    fn healthy_peer(&self, id: u64) -> bool {
        self.peer_active_since
            .get(&id)
            .is_some_and(|since| self.tick >= since + self.cfg.health_ticks)
    }

    /// etcd's isConnectedFullySince over the voters.
    fn connected_to_all_voters(&self, members: &crate::membership::Membership) -> bool {
        members
            .voters()
            .all(|m| m.id == self.cfg.id || self.healthy_peer(m.id))
    }

    /// On the leader: the learner's log matches at least 90% of the leader's (etcd's
    /// isLearnerReady; a member raft does not track counts as ready, as there).
    fn learner_ready(&self, id: u64) -> bool {
        let prs = self.raw.raft.prs();
        let Some(learner) = prs.get(id) else {
            return true;
        };
        let leader = prs.get(self.cfg.id).map(|p| p.matched).unwrap_or(0);
        learner.matched * 100 >= leader * LEARNER_READY_PERCENT
    }

    /// Writes for the state machine. Returns the request ids their [`Output::Response`]s
    /// carry, in order.
    pub fn handle_proposals(&mut self, requests: Vec<Request>) -> Result<Vec<u64>, Fatal> {
        let mut ids = Vec::with_capacity(requests.len());
        for mut request in requests {
            let id = self.ids.next_id();
            if let Request::LeaseGrant(g) = &mut request {
                if g.id == 0 {
                    // etcd's LeaseGrant: a positive ID from the request ID generator.
                    g.id = (id & (i64::MAX as u64)) as i64;
                }
            }
            let data = InternalRequest {
                id,
                request: Some(request),
                header: None,
            }
            .encode_to_vec();
            self.propose(HeldProposal {
                id,
                data,
                since_tick: self.tick,
            });
            ids.push(id);
        }
        self.drive()?;
        Ok(ids)
    }

    /// `count` linearizable reads, sent as one ReadIndex: [`Output::ReadReady`] with each
    /// returned id says when local state is at least as new as the cluster's commit index
    /// at the time of this call.
    pub fn handle_reads(&mut self, count: usize) -> Result<Vec<u64>, Fatal> {
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            let id = self.ids.next_id();
            ids.push(id);
            if self.pending_reads.len() >= MAX_PENDING_READS {
                self.outputs.push_back(Output::ReadReady {
                    id,
                    result: Err(RequestError::TooManyRequests),
                });
            } else {
                self.pending_reads.push((id, self.tick));
            }
        }
        self.drive()?;
        Ok(ids)
    }

    /// Every [`Output::AppendLog`] through `number` is durable.
    pub fn handle_persisted(&mut self, number: u64) -> Result<(), Fatal> {
        while self.persisting.front().is_some_and(|n| *n <= number) {
            self.persisting.pop_front();
        }
        if self.status.removed {
            return Ok(());
        }
        self.raw.on_persist_ready(number);
        self.drive()
    }

    /// The [`Output::Commit`] for `applied` is durable.
    pub fn handle_committed(&mut self, applied: u64) -> Result<(), Fatal> {
        self.state.committed(applied);
        if self.status.removed {
            return self.request_commit(); // whatever applied after the one in flight
        }
        if self.state.durable_applied() == self.state.applied() {
            self.snapshot_and_compact()?;
        }
        // Copies of the state and a defragmentation waiting for this commit go before more
        // is applied (the copies first: they need the writer idle, which the other takes).
        self.maybe_state_copy()?;
        self.maybe_defragment()?;
        self.apply_queued()?;
        self.drive()
    }

    /// The [`Output::BuildSnapshot`] asked for is written (its file's `SnapshotRef`), or
    /// failed, which stops the member. Raft may send it to lagging followers from now on.
    pub fn handle_snapshot_built(&mut self, file: Result<SnapshotRef, Fatal>) -> Result<(), Fatal> {
        let Some((index, term, conf_state)) = self.building.take() else {
            return Ok(());
        };
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                // Only a lagging follower needed it: the member goes on, and raft asks again
                // after a pause (a full disk is not retried in a tight loop).
                tracing::error!(index, "building a snapshot failed: {e}");
                self.next_build_tick = self.tick + SNAPSHOT_RETRY_TICKS;
                return self.drive();
            }
        };
        let log = self.raw.mut_store();
        if index < log.compacted_index() {
            // The log moved past it while it was built (a snapshot from the leader, or a
            // compaction): raft asks again if it still needs one.
            return self.drive();
        }
        let mut snap = Snapshot::default();
        snap.set_data(file.encode_to_vec().into());
        let md = snap.mut_metadata();
        md.index = index;
        md.term = term;
        md.set_conf_state(conf_state);
        log.set_snapshot(snap);
        // Requests raft made while this was built are answered by it.
        self.snapshot_wanted = false;
        tracing::info!(index, "snapshot built for a lagging follower");
        self.drive()
    }

    // ---- the Ready loop ----

    /// Runs raft until it has nothing to do. Not once this member is removed: raft-rs
    /// panics if it steps on as a member missing from its own configuration (a removed
    /// leader unwraps its own progress), and the executor is about to stop it anyway.
    fn drive(&mut self) -> Result<(), Fatal> {
        if self.status.removed {
            return Ok(());
        }
        self.pin_election_timeout();
        self.catch_up_raft_applied();
        if !self.campaign_would_read_compacted_log() {
            if let Some(m) = self.held_timeout_now.take() {
                let _ = self.raw.step(m);
            }
        }
        self.flush_held();
        for _ in 0..MAX_READIES_PER_INPUT {
            if self.status.removed || !self.raw.has_ready() || self.must_defer_ready() {
                break;
            }
            self.handle_ready()?;
            // A round that ended in this Ready lets the reads waiting behind it go.
            self.flush_reads();
        }
        self.release_reads();
        self.maybe_snapshot()?;
        self.maybe_state_copy()?;
        self.maybe_defragment()?;
        self.update_status();
        self.settle_leader_moves();
        self.pin_election_timeout();
        Ok(())
    }

    /// Between a snapshot's install and its log write becoming durable, raft's applied index
    /// cannot follow yet ([`Self::catch_up_raft_applied`]: at most the persisted index) while
    /// the log already starts after the snapshot: a campaign must wait (ticks do not reach
    /// raft's election timer, a MsgTimeoutNow is held) until the write is durable.
    fn campaign_would_read_compacted_log(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        log.unstable.snapshot.is_none() && log.applied < self.raw.store().compacted_index()
    }

    /// raft-rs learns the applied index only from `advance_apply_to`. After a snapshot
    /// install nothing applies until the next entries commit, so raft's applied index stayed
    /// below the log's first index, and a campaign then (an election timeout, or MoveLeader's
    /// MsgTimeoutNow) read the "unapplied" entries from a compacted log and panicked (raft-rs
    /// `hup`: "unexpected error getting unapplied entries ... Store(Compacted)"). raft's
    /// applied index follows the state machine's as soon as raft allows it (at most the
    /// committed and the persisted index).
    fn catch_up_raft_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let applied = self.state.applied();
        if applied > log.applied && applied <= log.committed.min(log.persisted) {
            self.raw.advance_apply_to(applied);
        }
    }

    /// A client asked this member to defragment its data file (etcd's Maintenance.Defragment,
    /// local to the member). Once everything applied is durable, [`Output::Defragment`]
    /// hands the file out; applying waits until [`Self::handle_defragmented`], reads and raft
    /// go on.
    pub fn handle_defragment(&mut self) -> Result<(), Fatal> {
        if self.defrag == Defrag::Idle {
            self.defrag = Defrag::Wanted;
        }
        self.drive()
    }

    /// The [`Output::Defragment`] ended: `copy` is the compact data file that replaces the
    /// old one, or None if copying failed (the old one stays; the client is told why).
    pub fn handle_defragmented(
        &mut self,
        copy: Option<std::sync::Arc<redb::Database>>,
    ) -> Result<(), Fatal> {
        if self.defrag != Defrag::Running {
            return Ok(());
        }
        self.state.finish_defragment(copy);
        self.defrag = Defrag::Idle;
        self.apply_queued()?;
        self.drive()
    }

    fn maybe_defragment(&mut self) -> Result<(), Fatal> {
        if self.defrag != Defrag::Wanted || self.installing.is_some() {
            return Ok(());
        }
        if self.state.is_committing() {
            return Ok(()); // handle_committed comes back here
        }
        if self.state.has_open_txn() {
            return self.request_commit();
        }
        let db = self.state.begin_defragment();
        self.defrag = Defrag::Running;
        self.outputs.push_back(Output::Defragment(db));
        Ok(())
    }

    /// No Ready while a snapshot from the leader is being installed; and a Ready carrying one
    /// waits until nothing is being committed or waiting to apply.
    fn must_defer_ready(&self) -> bool {
        self.installing.is_some()
            || (self.raw.raft.raft_log.unstable.snapshot.is_some()
                && (self.state.is_committing() || !self.to_apply.is_empty()))
    }

    /// The [`Output::InstallSnapshot`] asked for is durable (or failed, which stops the
    /// member): the log restarts after the snapshot and the rest of its Ready goes on.
    pub fn handle_snapshot_installed(
        &mut self,
        installed: Result<Installed, Fatal>,
    ) -> Result<(), Fatal> {
        let installed = installed?;
        let rd = self
            .installing
            .take()
            .expect("an install was reported that was not asked for");
        let index = installed.index;
        self.state.finish_install(installed);
        let log = self.raw.mut_store();
        log.install_snapshot(rd.snapshot());
        let image = log.file_image();
        self.outputs.push_back(Output::ReplaceLog { image });
        self.last_compaction_index = index;
        self.awaiting_first_snapshot = false;
        self.status.snapshots_installed += 1;
        tracing::info!(index, "installed snapshot from leader");
        if let Some(revision) = self.state.take_replaced() {
            self.outputs.push_back(Output::StoreReplaced(revision));
        }
        self.membership_changed();
        self.finish_ready(rd)?;
        self.drive()
    }

    fn handle_ready(&mut self) -> Result<(), Fatal> {
        let mut rd = self.raw.ready();

        if let Some(ss) = rd.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }
        for rs in rd.take_read_states() {
            self.on_read_state(&rs.request_ctx, rs.index);
        }

        // 1. Messages a leader may send before its own log write (raft thesis 10.2.1).
        self.send(rd.take_messages());

        // 2. A snapshot from the leader replaces the state machine (durably, off the
        // driver), then the log; the rest of this Ready waits for it.
        if !rd.snapshot().is_empty() {
            let install = self.state.begin_install(rd.snapshot().clone());
            self.outputs
                .push_back(Output::InstallSnapshot(Box::new(install)));
            self.installing = Some(rd);
            return Ok(());
        }
        self.finish_ready(rd)
    }

    /// Steps 3-7 of a Ready (after its snapshot, if it had one, is installed).
    fn finish_ready(&mut self, mut rd: Ready) -> Result<(), Fatal> {
        // 3. Committed entries (all persisted locally: raft-rs bounds them so).
        self.apply_committed(rd.take_committed_entries())?;
        if self.status.removed {
            return Ok(()); // see `drive`
        }

        // 4-5. New entries and hard state go to the log. A hard state that only moved its
        // commit index is not worth a sync: a restart takes commit from the applied index.
        let sync = rd.must_sync();
        let log = self.raw.mut_store();
        log.append(rd.entries())
            .map_err(|e| Fatal::new("appending to the raft log", e))?;
        if sync {
            if let Some(hs) = rd.hs() {
                log.set_hard_state(hs);
            }
        }
        let records = log.take_pending();
        let persisted_msgs = rd.take_persisted_messages();

        // 6-7. With nothing to write and nothing in flight, the Ready is done now; otherwise
        // its persisted messages go with the log write, and the executor sends them as soon
        // as it is durable (not through the driver: one hop less for a follower's answer).
        if records.is_empty() && !sync && self.persisting.is_empty() && rd.snapshot().is_empty() {
            self.send(persisted_msgs);
            let mut light = self.raw.advance_append(rd);
            self.send(light.take_messages());
            self.apply_committed(light.take_committed_entries())?;
        } else {
            let number = rd.number();
            self.persisting.push_back(number);
            self.outputs.push_back(Output::AppendLog {
                number,
                records,
                sync,
                then_send: persisted_msgs,
            });
            self.raw.advance_append_async(rd);
        }
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.outputs.push_back(Output::Send(msgs));
        }
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole) {
        if leader != self.status.leader && leader != 0 {
            self.status.leader_changes += 1;
        }
        if leader != self.status.leader {
            self.leader_epoch += 1;
            // A membership change in flight died with the leader that proposed it: say so
            // now, the executor asks the new leader. Writes keep waiting for their entry (it
            // may well commit under the new leader) until the request timeout, as etcd's do.
            let moved: Vec<u64> = self
                .waiting
                .iter()
                .filter(|(_, w)| w.membership)
                .map(|(id, _)| *id)
                .collect();
            for id in moved {
                self.waiting.remove(&id);
                self.status.proposals_failed += 1;
                self.outputs.push_back(Output::Response {
                    id,
                    result: Err(RequestError::LeaderChanged),
                });
            }
            // Read indexes in flight may never be answered: ask the new leader, each batch
            // under a fresh context (a context is never reused across attempts).
            let batches = std::mem::take(&mut self.read_batches);
            self.status.read_retries += batches.len() as u64;
            for (_, b) in batches {
                let since = b.sent_tick;
                self.pending_reads
                    .extend(b.ids.into_iter().map(|id| (id, since)));
            }
        }
        if self.status.is_leader && role != StateRole::Leader {
            self.state.views().leases_mut(|l| l.demote());
        }
        self.status.leader = leader;
        self.status.is_leader = role == StateRole::Leader;
        if leader != 0 {
            self.status.has_had_leader = true;
        }
    }

    fn read_ctx(&self, counter: u64) -> Vec<u8> {
        // The leader keys pending reads by context: make it unique across members.
        let mut ctx = self.cfg.id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&counter.to_be_bytes());
        ctx
    }

    fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Some(counter) = ctx
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return;
        };
        if let Some(batch) = self.read_batches.remove(&counter) {
            self.indexed_reads.push((index, batch.ids));
        }
    }

    fn release_reads(&mut self) {
        let applied = self.state.applied();
        let outputs = &mut self.outputs;
        self.indexed_reads.retain_mut(|(index, ids)| {
            if *index > applied {
                return true;
            }
            for id in ids.drain(..) {
                outputs.push_back(Output::ReadReady { id, result: Ok(()) });
            }
            false
        });
    }

    /// Sends reads waiting for a leader as one ReadIndex batch under a fresh context.
    fn flush_held(&mut self) {
        if self.raw.raft.leader_id == 0 {
            return;
        }
        let held: Vec<HeldProposal> = self.held.drain(..).collect();
        for p in held {
            self.propose(p);
        }
        self.flush_reads();
    }

    /// Sends the reads waiting to be sent as one ReadIndex round, unless the rounds in
    /// flight are at [`MAX_READ_ROUNDS_IN_FLIGHT`] (they go when one ends or is retried).
    /// Nor before this member has seen an entry of the leader's term committed: a raft-rs
    /// leader drops a ReadIndex until then (raft.rs, MsgReadIndex), and the round, with every
    /// read behind it, would wait for the retry.
    fn flush_reads(&mut self) {
        if self.raw.raft.leader_id == 0
            || self.pending_reads.is_empty()
            || self.read_batches.len() >= MAX_READ_ROUNDS_IN_FLIGHT
            || !self.raw.raft.commit_to_current_term()
        {
            return;
        }
        let ids = self.pending_reads.drain(..).map(|(id, _)| id).collect();
        self.send_read_batch(ids);
    }

    fn send_read_batch(&mut self, ids: Vec<u64>) {
        let counter = self.next_read_ctx;
        if !self.cfg.mutations.reuse_read_context {
            self.next_read_ctx += 1;
        }
        // Under the mutation a retried round reuses its context: raft-rs's leader ignores a
        // context it still holds, and the first attempt's late answer, taken before the reads
        // that joined the retry arrived, releases them all.
        self.raw.read_index(self.read_ctx(counter));
        self.read_batches.insert(
            counter,
            ReadBatch {
                ids,
                sent_tick: self.tick,
            },
        );
    }

    /// ReadIndex requests can be lost (a dropped message, a leader that stepped down):
    /// unanswered batches go again, each under a fresh context.
    fn retry_reads(&mut self) {
        if self.raw.raft.leader_id == 0 {
            return;
        }
        let stale: Vec<u64> = self
            .read_batches
            .iter()
            .filter(|(_, b)| self.tick - b.sent_tick >= self.cfg.read_retry_ticks)
            .map(|(c, _)| *c)
            .collect();
        for counter in stale {
            self.status.read_retries += 1;
            let mut ids = self.read_batches.remove(&counter).unwrap().ids;
            // The reads waiting behind the lost round go with it.
            ids.extend(self.pending_reads.drain(..).map(|(id, _)| id));
            self.send_read_batch(ids);
        }
    }

    fn propose(&mut self, p: HeldProposal) {
        if self.raw.raft.leader_id != 0 && self.raw.propose(vec![], p.data.clone()).is_ok() {
            let w = Waiting {
                since_tick: p.since_tick,
                ..self.waiting_since_now(false)
            };
            self.waiting.insert(p.id, w);
            return;
        }
        if self.held.len() >= MAX_HELD_PROPOSALS {
            self.status.proposals_failed += 1;
            self.outputs.push_back(Output::Response {
                id: p.id,
                result: Err(RequestError::NoLeader),
            });
        } else {
            self.held.push_back(p);
        }
    }

    /// What a proposal made now waits as.
    fn waiting_since_now(&self, membership: bool) -> Waiting {
        Waiting {
            since_tick: self.tick,
            leader_epoch: self.leader_epoch,
            membership,
        }
    }

    /// Proposals and reads that waited `hold_ticks` for a leader fail with `NoLeader` (reads
    /// still unsent with a leader known time out); proposals whose entry did not apply
    /// within `hold_ticks` of their arrival time out.
    fn expire_held(&mut self) {
        let (tick, hold) = (self.tick, self.cfg.hold_ticks);
        let expired: Vec<(u64, Waiting)> = self
            .waiting
            .iter()
            .filter(|(_, w)| tick - w.since_tick >= hold)
            .map(|(id, w)| (*id, *w))
            .collect();
        for (id, w) in expired {
            self.waiting.remove(&id);
            self.status.proposals_failed += 1;
            self.outputs.push_back(Output::Response {
                id,
                result: Err(RequestError::TimedOut {
                    leader_failed: w.leader_epoch != self.leader_epoch,
                }),
            });
        }
        while self
            .held
            .front()
            .is_some_and(|p| tick - p.since_tick >= hold)
        {
            let p = self.held.pop_front().unwrap();
            self.status.proposals_failed += 1;
            self.outputs.push_back(Output::Response {
                id: p.id,
                result: Err(RequestError::NoLeader),
            });
        }
        let outputs = &mut self.outputs;
        let has_leader = self.raw.raft.leader_id != 0;
        self.pending_reads.retain(|(id, since)| {
            if tick - since < hold {
                return true;
            }
            // With a leader, a read waits here only behind a round in flight (retried,
            // taking it along, long before this) or for the leader's first commit of its term.
            let result = if has_leader {
                Err(RequestError::TimedOut {
                    leader_failed: false,
                })
            } else {
                Err(RequestError::NoLeader)
            };
            outputs.push_back(Output::ReadReady { id: *id, result });
            false
        });
    }

    fn publish_attributes(&mut self) {
        let a = &self.cfg.attributes;
        let published = self.state.views().members(|m| {
            m.get(self.cfg.id)
                .is_some_and(|m| m.name == a.name && m.client_urls == a.client_urls)
        });
        if published {
            self.attributes_published = true;
            self.status.published = true;
            // etcd's start-up milestones, which tools and test rigs wait for (etcd's e2e
            // suite waits for both): the cluster's capabilities, then the member published.
            tracing::info!(
                "enabled capabilities for version {}",
                crate::CLUSTER_API_VERSION
            );
            // etcd 3.5's fields (etcdserver/server.go publishV3), Go's %+v of the attributes.
            tracing::info!(
                local_member_id = %crate::ids::format_id(self.cfg.id),
                local_member_attributes = %format!("{{Name:{} ClientURLs:[{}]}}", a.name, a.client_urls.join(" ")),
                cluster_id = %crate::ids::format_id(self.state.views().members(|m| m.cluster_id())),
                "published local member to cluster through raft"
            );
            return;
        }
        let req = InternalRequest {
            id: self.ids.next_id(),
            request: Some(Request::SetAttributes(a.clone())),
            header: None,
        };
        // Fire and forget: retried every election timeout until the member list shows it.
        let _ = self.raw.propose(vec![], req.encode_to_vec());
    }

    // ---- leases ----

    /// The leases' clock moves with the ticks; the leader proposes the revokes of expired
    /// leases (at most etcd's 1000 a second) and the checkpoints due.
    fn tick_leases(&mut self) {
        let now = self.tick * self.cfg.tick_ms;
        let early = self.cfg.mutations.early_lease_expiry_percent;
        let per_tick = (LEASE_REVOKES_PER_SECOND * self.cfg.tick_ms / 1000).max(1) as usize;
        let interval = self.cfg.lease_checkpoint_interval_ms;
        let (expired, checkpoints) = self.state.views().leases_mut(|l| {
            l.advance_by_ticks(now, self.cfg.tick_ms);
            let expired = l.expired_early(per_tick, early);
            (expired, l.checkpoints_due(interval, MAX_LEASE_CHECKPOINTS))
        });
        if !self.status.is_leader {
            return;
        }
        for id in expired {
            self.propose_internal(Request::LeaseRevoke(pb::LeaseRevokeRequest { id }));
        }
        if !checkpoints.is_empty() {
            let checkpoints = checkpoints
                .into_iter()
                .map(|(id, remaining_ttl)| pb::LeaseCheckpoint { id, remaining_ttl })
                .collect();
            self.propose_internal(Request::LeaseCheckpoint(pb::LeaseCheckpointRequest {
                checkpoints,
            }));
        }
    }

    /// This member's clock, Unix ms: the last [`Server::handle_wall_clock`], else its start
    /// time plus the ticks since (core reads no clock). The v2 store's TTLs expire by the
    /// leader's.
    pub fn wall_clock_ms(&self) -> u64 {
        self.wall_clock_ms
            .unwrap_or(self.cfg.start_unix_ms + self.tick * self.cfg.tick_ms)
    }

    /// The executor's wall clock, Unix ms, given before ticks: ticks may be delayed, and the
    /// v2 store's expiry times come from proposers' wall clocks (etcd stamps its v2 SYNC with
    /// `time.Now()`).
    pub fn handle_wall_clock(&mut self, unix_ms: u64) {
        self.wall_clock_ms = Some(unix_ms);
    }

    /// etcd's v2 SYNC (etcdserver/server.go, `sync` every 500 ms while the v2 store has TTL
    /// keys): the leader proposes its clock once a key is due, and applying it expires them.
    fn tick_v2_ttl(&mut self) {
        let period = (V2_SYNC_MS / self.cfg.tick_ms).max(1);
        if !self.status.is_leader || !self.tick.is_multiple_of(period) {
            return;
        }
        let now = self.wall_clock_ms();
        let due = self.state.views().v2(|s| s.next_expiry_ms());
        if due.is_some_and(|t| t <= now) {
            self.propose_internal(Request::V2(crate::proto::detcdpb::V2Request {
                method: "SYNC".into(),
                time_ms: now,
                ..Default::default()
            }));
        }
    }

    /// Proposes a request of the leader's own (no client waits for it). A proposal raft
    /// drops is not retried here: the caller asks again when it is still due.
    fn propose_internal(&mut self, request: Request) {
        let id = self.ids.next_id();
        let data = InternalRequest {
            id,
            request: Some(request),
            header: None,
        }
        .encode_to_vec();
        let _ = self.raw.propose(vec![], data);
    }

    // ---- apply ----

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.awaiting_first_snapshot {
            // Applying them would judge each configuration change against a member list
            // from later, and could leave raft counting this member as the only voter.
            return Err(Fatal(format!(
                "this member joined a running cluster, and the leader sent it log entries from \
                 index {} instead of a snapshot: they cannot tell it the cluster's \
                 configuration. Stopping before applying them",
                entries[0].index
            )));
        }
        self.to_apply.push_back(entries);
        self.apply_queued()
    }

    /// Applies what is committed, unless a commit is in flight (redb has one writer).
    fn apply_queued(&mut self) -> Result<(), Fatal> {
        while !self.state.is_committing() {
            let Some(entries) = self.to_apply.pop_front() else {
                break;
            };
            let answers_from = self.outputs.len();
            for e in &entries {
                self.apply_entry(e)?;
            }
            // The batch's events go out ahead of its answers, as etcd notifies its watchers
            // before the write returns: a client that sees its write acknowledged finds the
            // event already on its way to every watcher.
            let events = self.state.take_events();
            if !events.is_empty() {
                self.outputs.insert(answers_from, Output::Events(events));
            }
            let fired = self.state.views().v2_mut(|s| s.take_fired());
            if !fired.is_empty() {
                self.outputs.insert(answers_from, Output::V2Fired(fired));
            }
            if self.status.removed {
                // Make the removal durable now (raft is not driven any more, and no tick
                // will ask): restarted, this member then refuses to start.
                return self.request_commit();
            }
            self.raw.advance_apply_to(self.state.applied());
            if self.state.uncommitted_rows() >= self.cfg.max_uncommitted_rows {
                self.request_commit()?;
            }
        }
        Ok(())
    }

    fn apply_entry(&mut self, e: &Entry) -> Result<(), Fatal> {
        if e.index <= self.state.applied() {
            return Ok(()); // replayed from the log: its effects are already in the data file
        }
        if self.cfg.mutations.skip_apply_at == Some(e.index) {
            self.state.skip(e.index);
            return Ok(());
        }
        match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => {
                self.state.skip(e.index);
                // A new leader's empty entry: everything of earlier terms is applied, so
                // the leader takes over the leases' clock (etcd's applyEntryNormal).
                if self.status.is_leader && e.term == self.raw.raft.term {
                    let extend = self.cfg.election_ticks as u64 * self.cfg.tick_ms;
                    let interval = self.cfg.lease_checkpoint_interval_ms;
                    self.state
                        .views()
                        .leases_mut(|l| l.promote(extend, interval));
                }
            }
            EntryType::EntryNormal => {
                // Only members write entries: one that does not decode is corruption or a
                // bug, and applying around it would make this replica differ.
                let req = InternalRequest::decode(e.data.as_ref()).map_err(|err| {
                    Fatal(format!("raft entry {} does not decode: {err}", e.index))
                })?;
                if let Some(Request::MemberUpdate(u)) = &req.request {
                    let change = MemberChange::Update(u.clone());
                    return self.apply_member_change(e.index, req.id, change, None);
                }
                let result = self.state.apply(e.index, &req)?;
                if self.waiting.remove(&req.id).is_some() {
                    self.outputs.push_back(Output::Response {
                        id: req.id,
                        result: result.map_err(|err| RequestError::Refused(err.into())),
                    });
                }
            }
            EntryType::EntryConfChange => {
                let cc = crate::raftpb::decode_conf_change(&e.data)
                    .map_err(|err| Fatal::new("undecodable conf change", err))?;
                let (request_id, change) = change_from_conf_change(&cc)
                    .map_err(|err| Fatal(format!("conf change at {}: {err}", e.index)))?;
                return self.apply_member_change(e.index, request_id, change, Some(&cc));
            }
            EntryType::EntryConfChangeV2 => {
                // detcd proposes none; only raft-rs itself could (leaving a joint config).
                let cc = crate::raftpb::decode_conf_change_v2(&e.data)
                    .map_err(|err| Fatal::new("undecodable conf change", err))?;
                let cs = self
                    .raw
                    .apply_conf_change(&cc)
                    .map_err(|err| Fatal::new("applying a conf change", err))?;
                self.raw.mut_store().set_conf_state(cs.clone());
                self.state.apply_conf_state(e.index, &cs)?;
            }
        }
        Ok(())
    }

    /// Applies a membership change at `index`: checked again against the member list as
    /// it is now (the same on every member), then raft's configuration (for a conf change
    /// `cc`), the member table and the peer set change together. A change that no longer
    /// holds (a second add of one URL raced the first) is refused and changes nothing, as in
    /// etcd's applyConfChange.
    fn apply_member_change(
        &mut self,
        index: u64,
        request_id: u64,
        change: MemberChange,
        cc: Option<&ConfChange>,
    ) -> Result<(), Fatal> {
        // Only replicated state may decide here, or members would disagree: the learner limit
        // (a flag) was checked when the change was proposed.
        let verdict = self
            .state
            .views()
            .members(|m| m.validate(&change, usize::MAX));
        let result = match verdict {
            Err(e) => {
                tracing::warn!(index, "membership change refused at apply: {change}: {e}");
                self.state.skip(index);
                Err(RequestError::Refused(e.into()))
            }
            Ok(()) => {
                let cs = match cc {
                    Some(cc) => Some(
                        self.raw
                            .apply_conf_change(cc)
                            .map_err(|err| Fatal::new("applying a conf change", err))?,
                    ),
                    None => None,
                };
                if let Some(cs) = &cs {
                    self.raw.mut_store().set_conf_state(cs.clone());
                }
                if self.cfg.mutations.stale_member_table
                    && matches!(change, MemberChange::Promote(id) if id != self.cfg.id)
                {
                    if let Some(cs) = &cs {
                        self.state.apply_conf_state(index, cs)?;
                    }
                } else {
                    self.state
                        .apply_member_change(index, &change, cs.as_ref())?;
                }
                tracing::info!(index, "applied membership change: {change}");
                self.membership_changed();
                Ok(Applied::MemberChanged { index })
            }
        };
        if self.waiting.remove(&request_id).is_some() {
            self.outputs.push_back(Output::Response {
                id: request_id,
                result,
            });
        }
        Ok(())
    }

    /// Tells the executor the new peer set, and stops a member that is no longer in it.
    fn membership_changed(&mut self) {
        let (peers, removed) = self
            .state
            .views()
            .members(|m| (m.peers(), m.is_removed(self.cfg.id)));
        self.outputs.push_back(Output::MembershipChanged(peers));
        if removed && !self.status.removed {
            self.status.removed = true;
            tracing::warn!("this member was removed from the cluster");
            self.outputs.push_back(Output::Removed);
        }
    }

    /// Hands the open transaction out to be committed, if there is anything in it.
    fn request_commit(&mut self) -> Result<(), Fatal> {
        if let Some(c) = self.state.take_commit()? {
            self.outputs.push_back(Output::Commit(Box::new(c)));
        }
        Ok(())
    }

    // ---- snapshots and log compaction ----

    fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        if self.raw.store().take_snapshot_wanted() {
            self.snapshot_wanted = true;
        }
        if self.state.applied() >= self.last_compaction_index + self.cfg.snapshot_count.max(1) {
            self.compaction_due = true;
        }
        if !(self.compaction_due || self.may_build()) {
            return Ok(());
        }
        if self.state.is_committing() {
            return Ok(()); // handle_committed takes it
        }
        if self.state.durable_applied() == self.state.applied() {
            return self.snapshot_and_compact();
        }
        self.request_commit()
    }

    /// Raft wants a snapshot, none is being built, and no failed build is being waited out.
    fn may_build(&self) -> bool {
        self.snapshot_wanted && self.building.is_none() && self.tick >= self.next_build_tick
    }

    /// With the state machine durable through the applied index: compacts the log if due,
    /// and asks for a snapshot at the applied index if raft wants one for a lagging follower
    /// ([`Self::handle_snapshot_built`]).
    fn snapshot_and_compact(&mut self) -> Result<(), Fatal> {
        let index = self.state.applied();
        if self.compaction_due {
            self.compaction_due = false;
            self.last_compaction_index = index;
            // A tiny --snapshot-count asks for a small log: keep no more than it as tail.
            let keep = self
                .cfg
                .catch_up_entries
                .min(self.cfg.snapshot_count.max(1));
            let compact_to = index.saturating_sub(keep);
            let log = self.raw.mut_store();
            if compact_to > log.compacted_index() {
                log.compact(compact_to)
                    .map_err(|e| Fatal::new("compacting the raft log", e))?;
                let image = log.file_image();
                self.outputs.push_back(Output::ReplaceLog { image });
                tracing::info!(index, compact_to, "raft log compacted");
            }
        }
        if self.may_build() {
            self.snapshot_wanted = false;
            let Some(term) = self.raw.store().entry_term(index) else {
                return Ok(());
            };
            let source = self.state.snapshot_source()?;
            self.building = Some((index, term, self.raw.store().conf_state().clone()));
            self.outputs
                .push_back(Output::BuildSnapshot(Box::new(source)));
        }
        Ok(())
    }

    /// From the member table, which a joining member has before raft's configuration reaches
    /// it with the leader's snapshot.
    fn is_learner(&self) -> bool {
        self.state
            .views()
            .members(|m| m.get(self.cfg.id).is_some_and(|m| m.is_learner))
    }

    fn update_status(&mut self) {
        self.status.is_learner = self.is_learner();
        self.status.term = self.raw.raft.term;
        self.status.vote = self.raw.raft.vote;
        self.status.commit = self.raw.raft.raft_log.committed;
        self.status.applied = self.state.applied();
        self.status.proposals_pending = (self.waiting.len() + self.held.len()) as u64;
        self.status.installing_snapshot = self.installing.is_some();
    }
}

/// Where a client-asked defragmentation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defrag {
    Idle,
    /// Asked for: starts once everything applied is durable.
    Wanted,
    /// The data file is being copied; nothing is applied meanwhile.
    Running,
}

/// The raft ConfChange for a change of raft's configuration (not [`MemberChange::Update`]),
/// and its context, which carries the request ID and the member (as etcd's carries its
/// member as JSON). A promotion is AddNode of a learner, as in etcd.
fn conf_change_for(request_id: u64, change: &MemberChange) -> (ConfChange, Vec<u8>) {
    let mut cc = ConfChange::default();
    cc.id = request_id;
    cc.node_id = change.member_id();
    let mut ctx = ConfChangeContext {
        request_id,
        ..Default::default()
    };
    match change {
        MemberChange::Add(m) => {
            cc.set_change_type(if m.is_learner {
                ConfChangeType::AddLearnerNode
            } else {
                ConfChangeType::AddNode
            });
            ctx.member = Some(m.clone());
        }
        MemberChange::Remove(_) => cc.set_change_type(ConfChangeType::RemoveNode),
        MemberChange::Promote(_) => {
            cc.set_change_type(ConfChangeType::AddNode);
            ctx.promote = true;
        }
        MemberChange::Update(_) => unreachable!("an update is not a raft configuration change"),
    }
    (cc, ctx.encode_to_vec())
}

/// The membership change a committed ConfChange carries (the inverse of [`conf_change_for`]).
fn change_from_conf_change(cc: &ConfChange) -> Result<(u64, MemberChange), String> {
    let ctx = ConfChangeContext::decode(cc.context.as_ref())
        .map_err(|e| format!("undecodable context: {e}"))?;
    let change = match (cc.get_change_type(), ctx.promote) {
        (ConfChangeType::RemoveNode, _) => MemberChange::Remove(cc.node_id),
        (ConfChangeType::AddNode, true) => MemberChange::Promote(cc.node_id),
        (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode, false) => {
            let m = ctx.member.ok_or("an add without its member")?;
            let learner = cc.get_change_type() == ConfChangeType::AddLearnerNode;
            if m.id != cc.node_id || m.is_learner != learner {
                return Err(format!(
                    "member {} (learner {}) does not match node {}",
                    m.id, m.is_learner, cc.node_id
                ));
            }
            MemberChange::Add(m)
        }
        (ConfChangeType::AddLearnerNode, true) => return Err("a promotion to learner".into()),
    };
    Ok((ctx.request_id, change))
}
