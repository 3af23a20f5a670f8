//! etcd's v3 client API: the KV, Cluster and Maintenance gRPC services.
//!
//! Writes go through raft (`NodeHandle::propose`); reads are served from this member's state,
//! after a ReadIndex barrier unless the client asked for a serializable read.

use crate::errors::ApiError;
use crate::node::{Applied, NodeHandle, Shared};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::transport::PeerDialTls;
use detcd_core::ids::format_id;
use detcd_core::membership::{MemberChange, MemberError};
use detcd_core::mvcc::{is_txn_readonly, Mvcc};
use detcd_core::proto::detcdpb::internal_request::Request as Internal;
use detcd_core::proto::detcdpb::{
    member_change_request, MemberChangeRequest, MemberRecord, MemberUpdate,
};
use detcd_core::proto::etcdserverpb::{self as pb, request_op, ResponseHeader};
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The etcd server version detcd answers as, in Status and /version (the two always agree).
/// 3.4.31 is the first 3.4 whose watch progress requests wait until every watcher of the
/// stream is synced (etcd issue 15220), as detcd's do (net/src/watch.rs): Kubernetes serves
/// consistent lists from its watch cache only from this version on.
pub const ETCD_VERSION: &str = "3.4.31";
/// The cluster version (etcd reports major.minor.0).
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

#[derive(Clone)]
pub struct Api {
    pub node: NodeHandle,
    pub max_request_bytes: usize,
    /// How long a request may wait for raft (etcd: 5 s plus two election timeouts).
    pub request_timeout: Duration,
    /// Size of the data file on disk, for Status.
    pub db_size: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// How to dial the leader's peer URLs (membership changes asked of a follower).
    pub peer_tls: PeerDialTls,
    /// `--strict-reconfig-check`, passed with every membership change this member asks for.
    pub strict_reconfig_check: bool,
    /// `--experimental-watch-progress-notify-interval`.
    pub watch_progress_interval: Duration,
    /// `--election-timeout`: streams that require a leader end after three without one.
    pub election_timeout: Duration,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--quota-backend-bytes` (0: etcd's 2 GiB; None: a negative value, no quota).
    pub quota_bytes: Option<u64>,
    /// The client port's HTTP/2 settings.
    pub http2: Http2Settings,
    /// `--enable-v2`: serve the v2 keys API and `/new`.
    pub enable_v2: bool,
    /// The client port speaks TLS (the scheme of the URLs `/new` hands out).
    pub client_tls: bool,
}

/// `--max-concurrent-streams`, `--grpc-keepalive-interval` and `--grpc-keepalive-timeout`
/// (etcd's defaults: 2^32-1 streams, a ping after 2 h idle, 20 s to answer it).
#[derive(Clone, Copy, Debug)]
pub struct Http2Settings {
    pub max_concurrent_streams: u32,
    /// None: the server never pings (etcd's `--grpc-keepalive-interval 0`).
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

impl Api {
    /// The Watch service over this member's watch hub.
    pub fn watch_service(&self) -> crate::watch::WatchService {
        crate::watch::WatchService {
            shared: self.node.shared.clone(),
            max_request_bytes: self.max_request_bytes,
            progress_interval: self.watch_progress_interval,
            election_timeout: self.election_timeout,
        }
    }

    fn shared(&self) -> &Shared {
        &self.node.shared
    }

    /// etcd's quota check before a write that grows the store (etcdserver/quota.go and
    /// api/v3rpc/quota.go): when the store's bytes plus the request's `cost` reach the quota,
    /// this member raises a NOSPACE alarm through raft and the write is refused. detcd counts
    /// the bytes the store holds (every kept revision's key and value), not the data file's
    /// size: compaction alone makes room, defragmentation only returns free pages.
    pub(crate) async fn check_quota(&self, cost: u64) -> Result<(), ApiError> {
        let Some(quota) = self.quota_bytes else {
            return Ok(());
        };
        let stored = self.shared().mvcc.read().unwrap().stored_bytes();
        if stored.saturating_add(cost) < quota {
            return Ok(());
        }
        let raised = self
            .shared()
            .members
            .read()
            .unwrap()
            .alarms()
            .list(pb::AlarmType::Nospace)
            .iter()
            .any(|a| a.member_id == self.shared().member_id);
        if !raised {
            let req = pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Activate as i32,
                member_id: self.shared().member_id,
                alarm: pb::AlarmType::Nospace as i32,
            };
            let len = req.encoded_len();
            // As etcd, the write is refused whether or not the alarm got through.
            if let Err(e) = self.write(Internal::Alarm(req), len).await {
                tracing::warn!("raising the NOSPACE alarm failed: {e}");
            }
        }
        Err(ApiError::Mvcc(detcd_core::mvcc::MvccError::NoSpace))
    }

    fn header(&self, revision: Option<i64>) -> Option<ResponseHeader> {
        Some(match revision {
            Some(r) => self.shared().header_at(r),
            None => self.shared().header(),
        })
    }

    fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map(|h| h.revision).filter(|r| *r > 0);
        *h = self.header(rev);
    }

    /// A learner serves only Status and serializable ranges (etcd's
    /// api/v3rpc/interceptor.go): everything else is refused with etcd's error.
    pub(crate) fn refuse_learner(&self) -> Result<(), ApiError> {
        if self.shared().status().is_learner {
            return Err(ApiError::NotSupportedForLearner);
        }
        Ok(())
    }

    async fn write(&self, req: Internal, encoded_len: usize) -> Result<Applied, Status> {
        self.refuse_learner()?;
        if encoded_len > self.max_request_bytes {
            return Err(ApiError::TooLarge.into());
        }
        Ok(self.node.propose(req, self.request_timeout).await?)
    }

    /// Proposes a write and answers with the response `pick` finds in its applied result.
    pub(crate) async fn write_as<T: WithHeader>(
        &self,
        req: Internal,
        encoded_len: usize,
        pick: fn(Applied) -> Result<T, Applied>,
    ) -> Result<Response<T>, Status> {
        match pick(self.write(req, encoded_len).await?) {
            Ok(mut resp) => {
                self.fill(resp.header_mut());
                Ok(Response::new(resp))
            }
            Err(other) => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// Serves a range from local state (the caller has done any barrier it needs), on a
    /// read view that holds no lock apply needs; a range that may be large runs on a
    /// blocking thread, so it holds up no async worker either.
    async fn local_range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let shared = self.node.shared.clone();
        let large = may_be_large(&r);
        let read = move || -> Result<pb::RangeResponse, Status> {
            let (mvcc, txn) = shared.read_view().map_err(Status::from)?;
            Ok(mvcc.range_in(&txn, &r).map_err(ApiError::Mvcc)?)
        };
        let mut resp = if large {
            run_blocking(read).await?
        } else {
            read()?
        };
        self.fill(&mut resp.header);
        Ok(resp)
    }
}

/// A range over one key, or limited to a few, is served in place; anything else may cover
/// the whole store.
fn may_be_large(r: &pb::RangeRequest) -> bool {
    !(r.range_end.is_empty() || (r.limit > 0 && r.limit <= 1000))
}

/// Runs a long read on a blocking thread.
#[cfg(not(madsim))]
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("read task failed: {e}")))?
}

/// Under madsim there are no blocking threads: the read runs in place, after a moment of
/// simulated time (a real read takes some): otherwise a watcher's whole catch-up would happen
/// in one step and races with it (a progress request arriving meanwhile) could never show.
#[cfg(madsim)]
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    f()
}

/// The write responses, whose headers the API fills (cluster, member, term).
pub(crate) trait WithHeader {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! with_header {
    ($($t:ty),*) => {$(
        impl WithHeader for $t {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}
with_header!(
    pb::PutResponse,
    pb::DeleteRangeResponse,
    pb::TxnResponse,
    pb::CompactionResponse,
    pb::LeaseGrantResponse,
    pb::LeaseRevokeResponse,
    pb::AlarmResponse
);

#[tonic::async_trait]
impl Kv for Api {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = req.into_inner();
        if !r.serializable {
            self.refuse_learner()?;
        }
        Mvcc::validate_range(&r).map_err(ApiError::Mvcc)?;
        if !r.serializable && !crate::mutation::active("stale-read") {
            self.node.read_barrier(self.request_timeout).await?;
        }
        Ok(Response::new(self.local_range(r).await?))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let r = req.into_inner();
        Mvcc::validate_put(&r).map_err(ApiError::Mvcc)?;
        self.check_quota(put_cost(&r)).await?;
        let len = r.encoded_len();
        if crate::mutation::active("ack-before-commit") {
            let api = self.clone();
            let header = self.header(None);
            tokio::spawn(async move {
                let _ = api.write(Internal::Put(r), len).await;
            });
            return Ok(Response::new(pb::PutResponse {
                header,
                prev_kv: None,
            }));
        }
        self.write_as(Internal::Put(r), len, |a| match a {
            Applied::Put(resp) => Ok(resp),
            other => Err(other),
        })
        .await
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let r = req.into_inner();
        Mvcc::validate_delete_range(&r).map_err(ApiError::Mvcc)?;
        let len = r.encoded_len();
        self.write_as(Internal::DeleteRange(r), len, |a| match a {
            Applied::DeleteRange(resp) => Ok(resp),
            other => Err(other),
        })
        .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.refuse_learner()?;
        let r = req.into_inner();
        Mvcc::validate_txn(&r, self.max_txn_ops).map_err(ApiError::Mvcc)?;
        if is_txn_readonly(&r) {
            // As etcd: a txn that only reads is served locally, after a ReadIndex unless
            // every range in it is serializable.
            if !txn_is_serializable(&r) {
                self.node.read_barrier(self.request_timeout).await?;
            }
            let (mvcc, txn) = self.shared().read_view().map_err(Status::from)?;
            let mut resp = mvcc.txn_read_in(&txn, &r).map_err(ApiError::Mvcc)?;
            self.fill(&mut resp.header);
            return Ok(Response::new(resp));
        }
        self.check_quota(txn_cost(&r)).await?;
        let len = r.encoded_len();
        self.write_as(Internal::Txn(r), len, |a| match a {
            Applied::Txn(resp) => Ok(resp),
            other => Err(other),
        })
        .await
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let r = req.into_inner();
        let len = r.encoded_len();
        self.write_as(Internal::Compaction(r), len, |a| match a {
            Applied::Compact(resp) => Ok(resp),
            other => Err(other),
        })
        .await
    }
}

/// etcd's kvOverhead: an estimate of a key's metadata cost (etcdserver/quota.go).
const KV_OVERHEAD: u64 = 256;
/// etcd's leaseOverhead: an estimate of a lease's cost.
pub(crate) const LEASE_OVERHEAD: u64 = 64;

/// etcd's costPut.
fn put_cost(r: &pb::PutRequest) -> u64 {
    KV_OVERHEAD + (r.key.len() + r.value.len()) as u64
}

/// etcd's costTxn: the costlier branch's puts (nested txns count their own puts too).
fn txn_cost(t: &pb::TxnRequest) -> u64 {
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                Some(request_op::Request::RequestTxn(inner)) => txn_cost(inner),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// True when every range in the txn (nested ones included) asks for a serializable read.
fn txn_is_serializable(t: &pb::TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            Some(request_op::Request::RequestTxn(inner)) => txn_is_serializable(inner),
            _ => true,
        })
}

fn to_pb_member(m: &detcd_core::proto::detcdpb::MemberRecord) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// The pause before a membership change is forwarded again to a leader that did not answer.
const FORWARD_RETRY: Duration = Duration::from_millis(200);

/// Whether a membership change's answer means "ask again": leadership is moving, or raft
/// is applying another change (etcd's client would time out there; detcd waits for it).
fn retry_member_change(error: &str) -> bool {
    [
        "etcdserver: not leader",
        "etcdserver: no leader",
        "etcdserver: leader changed",
        "etcdserver: request timed out",
        "etcdserver: request timed out, possibly due to previous leader failure",
        "etcdserver: another membership change is in progress, retry when it has applied",
    ]
    .contains(&error)
}

/// Whether the member list already shows `change` (it applied in an earlier attempt).
fn change_in_effect(members: &detcd_core::membership::Membership, change: &MemberChange) -> bool {
    match change {
        MemberChange::Add(m) => members
            .get(m.id)
            .is_some_and(|have| have.peer_urls == m.peer_urls && have.is_learner == m.is_learner),
        MemberChange::Remove(id) => members.is_removed(*id),
        MemberChange::Promote(id) => members.get(*id).is_some_and(|m| !m.is_learner),
        MemberChange::Update(u) => members
            .get(u.member_id)
            .is_some_and(|m| m.peer_urls == u.peer_urls),
    }
}

/// Peer URLs as etcd's types.NewURLs takes them (`etcdserver: given member URLs are
/// invalid` otherwise), as normalized strings in sorted order.
fn parse_peer_urls(urls: &[String]) -> Result<Vec<detcd_core::config::Url>, Status> {
    let bad = || Status::from(ApiError::Refused(MemberError::BadUrls.into()));
    if urls.is_empty() {
        return Err(bad());
    }
    let mut parsed = urls
        .iter()
        .map(|u| detcd_core::config::Url::parse(u).map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort_by_key(|u| u.to_string());
    Ok(parsed)
}

fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Api {
    /// Runs a membership change and returns once this member has applied it, so the member
    /// list it answers with shows the change. Only the leader takes changes (it alone knows
    /// the peers' health and a learner's progress): a follower forwards the change over the
    /// peer port, as etcd forwards a promote, then waits for a ReadIndex, which covers the
    /// index the leader applied it at. A leader that cannot be reached (it just died, and
    /// this member has not noticed yet) is tried again, as etcd retries its forwarded
    /// promote, until the request timeout.
    async fn change_members(&self, change: MemberChange) -> Result<(), Status> {
        self.refuse_learner()?;
        let self_removal = MemberChange::Remove(self.shared().member_id);
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        // Set once an attempt may have applied without this member hearing so (a forward
        // that failed in flight, a leader change): a later refusal may be that attempt's
        // own effect ("already exist" for an add that did apply).
        let mut maybe_applied = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                // etcd's answer for an outcome nobody knows.
                return Err(ApiError::Timeout.into());
            }
            let local = self
                .node
                .member_changes
                .change(change.clone(), self.strict_reconfig_check, left)
                .await;
            let leader = match local {
                Ok(_) => return Ok(()),
                Err(ApiError::NotLeader(leader)) => leader,
                Err(e) if retry_member_change(&e.to_string()) => {
                    maybe_applied |= !matches!(e, ApiError::Refused(_));
                    tokio::time::sleep(FORWARD_RETRY.min(left)).await;
                    continue;
                }
                Err(ApiError::Refused(r)) if maybe_applied => {
                    return self
                        .in_effect_or(&change, left, ApiError::Refused(r).into())
                        .await;
                }
                Err(e) => return Err(e.into()),
            };
            let forwarded = self.forward_member_change(leader, &change, left).await;
            match forwarded {
                // This member was removed: it has stopped taking part in raft, so it cannot
                // wait for a read index (the member list it answers leaves it out).
                Ok(resp) if resp.error.is_empty() && change == self_removal => return Ok(()),
                Ok(resp) if resp.error.is_empty() => {
                    self.node.read_barrier(left).await?;
                    return Ok(());
                }
                // Leadership moved on (or is being handed over), or another change is being
                // applied: ask again.
                Ok(resp) if retry_member_change(&resp.error) => {
                    maybe_applied |= resp.error != MemberError::ChangeInProgress.to_string();
                    tokio::time::sleep(FORWARD_RETRY.min(left)).await;
                }
                Ok(resp) => {
                    let refused = Status::new(tonic::Code::from(resp.grpc_code), resp.error);
                    if maybe_applied {
                        return self.in_effect_or(&change, left, refused).await;
                    }
                    return Err(refused);
                }
                Err(e) => {
                    tracing::info!(leader = %format_id(leader), "forwarding a membership change failed: {e}; retrying");
                    maybe_applied = true;
                    tokio::time::sleep(FORWARD_RETRY.min(left)).await;
                }
            }
        }
    }

    /// After an attempt whose outcome was unknown, a refusal may be that attempt's own
    /// effect: if the member list (read linearizably) shows the change, it succeeded.
    async fn in_effect_or(
        &self,
        change: &MemberChange,
        left: Duration,
        refused: Status,
    ) -> Result<(), Status> {
        self.node.read_barrier(left).await?;
        let done = change_in_effect(&self.shared().members.read().unwrap(), change);
        if done {
            return Ok(());
        }
        Err(refused)
    }

    async fn forward_member_change(
        &self,
        leader: u64,
        change: &MemberChange,
        timeout: Duration,
    ) -> Result<detcd_core::proto::detcdpb::MemberChangeResponse, String> {
        let urls = self
            .shared()
            .members
            .read()
            .unwrap()
            .get(leader)
            .map(|m| m.peer_urls.clone())
            .unwrap_or_default();
        let req = MemberChangeRequest {
            cluster_id: self.shared().cluster_id,
            from: self.shared().member_id,
            strict: self.strict_reconfig_check,
            change: Some(match change.clone() {
                MemberChange::Add(m) => member_change_request::Change::Add(m),
                MemberChange::Remove(id) => member_change_request::Change::Remove(id),
                MemberChange::Update(u) => member_change_request::Change::Update(u),
                MemberChange::Promote(id) => member_change_request::Change::Promote(id),
            }),
        };
        crate::transport::forward_member_change(&urls, &self.peer_tls, req, timeout).await
    }

    /// The member list as this member has applied it; without this member once it is
    /// removed (it may not have applied its own removal when it answers).
    fn pb_members(&self) -> Vec<pb::Member> {
        let removed = self.shared().status().removed;
        self.shared()
            .members
            .read()
            .unwrap()
            .members()
            .filter(|m| !(removed && m.id == self.shared().member_id))
            .map(to_pb_member)
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for Api {
    /// etcd's MemberAdd: the new member's ID hashes its peer URLs with an empty token and the
    /// current Unix seconds (etcd-facts.md §1); it is listed without a name until it starts.
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = req.into_inner();
        let urls = parse_peer_urls(&r.peer_ur_ls)?;
        let record = MemberRecord {
            id: detcd_core::ids::member_id(&urls, "", Some(unix_now_secs())),
            peer_urls: urls.iter().map(|u| u.to_string()).collect(),
            is_learner: r.is_learner,
            ..Default::default()
        };
        self.change_members(MemberChange::Add(record.clone()))
            .await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(None),
            member: Some(to_pb_member(&record)),
            members: self.pb_members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        self.change_members(MemberChange::Remove(id)).await?;
        let mut members = self.pb_members();
        members.retain(|m| m.id != id);
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(None),
            members,
        }))
    }

    /// New peer URLs only; a learner stays a learner (etcd 3.5's fix of bug 21736).
    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let r = req.into_inner();
        let urls = parse_peer_urls(&r.peer_ur_ls)?;
        let update = MemberUpdate {
            member_id: r.id,
            peer_urls: urls.iter().map(|u| u.to_string()).collect(),
        };
        self.change_members(MemberChange::Update(update)).await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(None),
            members: self.pb_members(),
        }))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.refuse_learner()?;
        if req.into_inner().linearizable {
            self.node.read_barrier(self.request_timeout).await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(None),
            members: self.pb_members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        self.change_members(MemberChange::Promote(id)).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(None),
            members: self.pb_members(),
        }))
    }
}

/// Maintenance.Snapshot's stream of messages.
type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Stream messages buffered between the thread writing a snapshot and the client.
#[cfg(not(madsim))]
const SNAPSHOT_STREAM_BUFFER: usize = 4;

/// Snapshot streams served at once per member (each holds a blocking thread).
#[cfg(not(madsim))]
const SNAPSHOT_STREAMS: usize = 8;

#[cfg(not(madsim))]
static SNAPSHOT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SNAPSHOT_STREAMS);

/// How long a snapshot stream waits for its client to take the next chunk.
#[cfg(not(madsim))]
const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[tonic::async_trait]
impl Maintenance for Api {
    type SnapshotStream = SnapshotStream;

    /// etcd's Snapshot: this member's state at one applied index, as `etcdctl snapshot save`
    /// stores it (`crate::snapshot_save`: detcd's snapshot file, zero-padded to 512 bytes, in
    /// 32 KiB messages with the bytes remaining after each, then its SHA-256 with 0
    /// remaining). The copy is taken once everything applied is durable and written on a
    /// blocking thread, a chunk at a time as the client takes them (bounded memory); the
    /// first message's header carries the copy's revision. Not served in the simulator.
    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.refuse_learner()?;
        #[cfg(madsim)]
        {
            Err(Status::unimplemented(
                "detcd: Snapshot is not served in the simulator",
            ))
        }
        #[cfg(not(madsim))]
        {
            // Each stream holds a blocking thread and a read transaction: at most
            // SNAPSHOT_STREAMS at once (more wait their turn), and a client that takes no
            // chunk for SNAPSHOT_STALL_TIMEOUT is dropped, so stalled clients cannot use up
            // the blocking pool that disk work needs.
            let slot = SNAPSHOT_SLOTS
                .acquire()
                .await
                .map_err(|_| Status::unavailable("detcd: shutting down"))?;
            let source = self.node.state_copy(self.request_timeout).await?;
            let mut header = self.header(Some(source.revision()));
            let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_STREAM_BUFFER);
            let rt = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let sent = crate::snapshot_save::write_saved(&source, |blob, remaining| {
                    let msg = pb::SnapshotResponse {
                        header: header.take(),
                        remaining_bytes: remaining,
                        blob,
                    };
                    match rt.block_on(tokio::time::timeout(
                        SNAPSHOT_STALL_TIMEOUT,
                        tx.send(Ok(msg)),
                    )) {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(std::io::Error::other("the client went away")),
                        Err(_) => Err(std::io::Error::other(format!(
                            "the client took nothing for {} s",
                            SNAPSHOT_STALL_TIMEOUT.as_secs()
                        ))),
                    }
                });
                if let Err(e) = sent {
                    tracing::warn!("sending a snapshot to a client failed: {e}");
                    let _ = tx.blocking_send(Err(Status::internal(e)));
                }
            });
            let stream =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
                );
            Ok(Response::new(Box::pin(stream)))
        }
    }

    /// etcd's Alarm: GET lists the alarms (of one type, or all for NONE), ACTIVATE and
    /// DEACTIVATE raise and clear one through raft, answering what they changed.
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        self.refuse_learner()?;
        let r = req.into_inner();
        if r.action == pb::alarm_request::AlarmAction::Get as i32 {
            // etcd sends GET through raft too: a linearizable read gives the same answer.
            self.node.read_barrier(self.request_timeout).await?;
            let alarm = pb::AlarmType::try_from(r.alarm).unwrap_or(pb::AlarmType::None);
            let alarms = self.shared().members.read().unwrap().alarms().list(alarm);
            return Ok(Response::new(pb::AlarmResponse {
                header: self.header(None),
                alarms,
            }));
        }
        let len = r.encoded_len();
        self.write_as(Internal::Alarm(r), len, |a| match a {
            Applied::Alarm(resp) => Ok(resp),
            other => Err(other),
        })
        .await
    }

    /// etcd's Hash, over detcd's data: the CRC-32C of this member's state as its snapshot
    /// holds it (`SnapshotSource::hash`: every MVCC row, revisions, members, alarms, leases,
    /// the v2 store) at the applied index, taken once everything applied is durable and
    /// computed off the async workers. Equal on members that applied the same entries; not
    /// comparable with etcd's (a CRC over its bbolt file's buckets). The header's revision is
    /// the copy's.
    async fn hash(
        &self,
        _: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.refuse_learner()?;
        let source = self.node.state_copy(self.request_timeout).await?;
        let revision = source.revision();
        let hash = run_blocking(move || {
            source
                .hash()
                .map_err(|e| Status::internal(format!("etcdserver: hashing the store: {e}")))
        })
        .await?;
        Ok(Response::new(pb::HashResponse {
            header: self.header(Some(revision)),
            hash,
        }))
    }

    /// etcd's HashKV: a hash of this member's key-value history up to a revision, equal on
    /// members that applied the same writes (and to etcd's for the same store).
    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let rev = req.into_inner().revision;
        let shared = self.node.shared.clone();
        let (hash, current, compact_revision) = run_blocking(move || {
            let (mvcc, txn) = shared.read_view().map_err(Status::from)?;
            Ok(mvcc.hash_kv_in(&txn, rev).map_err(ApiError::Mvcc)?)
        })
        .await?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.header(Some(current)),
            hash,
            compact_revision,
        }))
    }

    /// etcd's Defragment: this member's data file is copied compactly and replaced; reads
    /// go on meanwhile, writes wait (see `crate::defrag`).
    async fn defragment(
        &self,
        _: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let before = (self.db_size)();
        let start = std::time::Instant::now();
        tracing::info!(current_db_size_bytes = before, "defragmenting");
        self.node.defragment().await?;
        tracing::info!(
            current_db_size_bytes = (self.db_size)(),
            previous_db_size_bytes = before,
            took_ms = start.elapsed().as_millis() as u64,
            "defragmented"
        );
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header(None),
        }))
    }

    /// etcd's MoveLeader (api/v3rpc/maintenance.go): only the leader takes it (`etcdserver:
    /// not leader` elsewhere); it answers once the target leads, or with etcd's
    /// `etcdserver: bad leader transferee` (the target is not a voting member) or
    /// `etcdserver: request timed out, leader transfer took too long`.
    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.refuse_learner()?;
        let target = req.into_inner().target_id;
        self.node.move_leader(target, self.request_timeout).await?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: self.header(None),
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.shared().status();
        let size = (self.db_size)() as i64;
        let mut errors = Vec::new();
        if st.leader == 0 {
            errors.push("etcdserver: no leader".to_string());
        }
        let alarms = self
            .shared()
            .members
            .read()
            .unwrap()
            .alarms()
            .list(pb::AlarmType::None);
        errors.extend(alarms.iter().map(detcd_core::alarms::alarm_text));
        let in_use = self.shared().mvcc.read().unwrap().stored_bytes() as i64;
        Ok(Response::new(pb::StatusResponse {
            header: self.header(None),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            db_size_in_use: in_use,
            is_learner: st.is_learner,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detcd_core::membership::Membership;

    /// A change retried after an unknown outcome answers success when the member list shows
    /// the first attempt applied it, and only then.
    #[test]
    fn a_change_is_in_effect_only_when_the_member_list_shows_it() {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        let rec = |id, url: &str, learner| MemberRecord {
            id,
            peer_urls: vec![url.to_string()],
            is_learner: learner,
            ..Default::default()
        };
        let mut m = Membership::bootstrap(&txn, 7, [rec(1, "http://a:2380", false)], []).unwrap();
        let add = MemberChange::Add(rec(2, "http://b:2380", true));
        assert!(!change_in_effect(&m, &add));
        m.apply(&txn, &add).unwrap();
        assert!(change_in_effect(&m, &add));
        assert!(!change_in_effect(
            &m,
            &MemberChange::Add(rec(2, "http://b:2380", false))
        ));
        assert!(!change_in_effect(&m, &MemberChange::Promote(2)));
        m.apply(&txn, &MemberChange::Promote(2)).unwrap();
        assert!(change_in_effect(&m, &MemberChange::Promote(2)));
        assert!(!change_in_effect(&m, &MemberChange::Remove(2)));
        m.apply(&txn, &MemberChange::Remove(2)).unwrap();
        assert!(change_in_effect(&m, &MemberChange::Remove(2)));
        let update = MemberChange::Update(MemberUpdate {
            member_id: 1,
            peer_urls: vec!["http://z:2380".into()],
        });
        assert!(!change_in_effect(&m, &update));
        m.apply(&txn, &update).unwrap();
        assert!(change_in_effect(&m, &update));
    }

    #[test]
    fn only_leadership_moves_and_busy_raft_are_retried() {
        assert!(retry_member_change("etcdserver: not leader"));
        assert!(retry_member_change(
            &MemberError::ChangeInProgress.to_string()
        ));
        assert!(!retry_member_change("etcdserver: member ID already exist"));
        assert!(!retry_member_change("etcdserver: unhealthy cluster"));
    }
}
