//! etcd's Lease service (etcdserver/api/v3rpc/lease.go, etcdserver/v3_server.go).
//!
//! Grant and Revoke go through raft like any write. KeepAlive and TimeToLive need the
//! leader's clock, which only the leader keeps (core/src/lease.rs): a follower forwards them
//! to the leader over the peer `LeaseForward` call, as etcd forwards to its peer `/leases`
//! handlers. Leases lists this member's leases without asking anyone.

use crate::api::Api;
use crate::errors::ApiError;
use crate::node::{Applied, Shared};
use crate::proto::detcdpb::peer_client::PeerClient;
use crate::proto::etcdserverpb::lease_server::Lease;
use detcd_core::lease::LeaseError;
use detcd_core::proto::detcdpb::internal_request::Request as Internal;
use detcd_core::proto::detcdpb::{lease_forward_request::Call, LeaseAnswer, LeaseForwardRequest};
use detcd_core::proto::etcdserverpb as pb;
use prost::Message as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

/// How long the leader waits for its applied index to reach its commit index before it
/// answers that a lease does not exist (etcd's waitAppliedIndex: 1 s).
const APPLIED_WAIT: Duration = Duration::from_secs(1);
/// Pause between tries while there is no leader to ask, or the new leader has not yet taken
/// over the leases' clock.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Waits (bounded) until this member has applied everything it knows committed: a lease
/// granted through another member is then known here.
async fn wait_applied(shared: &Shared) {
    let commit = shared.status().commit;
    let deadline = tokio::time::Instant::now() + APPLIED_WAIT;
    while shared.status().applied < commit && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn refused(e: &Status) -> LeaseAnswer {
    LeaseAnswer {
        error: e.message().to_string(),
        grpc_code: e.code() as i32,
        ..Default::default()
    }
}

/// A keep-alive or TimeToLive answered by this member, which must be the leader (answer
/// "not leader" otherwise: the asker tries again). An unknown lease answers TTL 0 to a
/// keep-alive and TTL -1 to TimeToLive, as etcd's do.
pub async fn answer_on_leader(shared: &Shared, call: Call) -> LeaseAnswer {
    let id = match &call {
        Call::KeepAlive(r) => r.id,
        Call::TimeToLive(r) => r.id,
    };
    // etcd's LeaseRenew and LeaseTimeToLive wait for the applied index first: a grant or
    // revoke committed but not yet applied here is then seen.
    wait_applied(shared).await;
    let mut waited = false;
    loop {
        let found = match &call {
            Call::KeepAlive(_) => shared
                .leases
                .write()
                .unwrap()
                .renew(id)
                .map(|r| (r.ttl, 0, Vec::new())),
            Call::TimeToLive(r) => {
                shared
                    .leases
                    .read()
                    .unwrap()
                    .time_to_live(id)
                    .map(|(left, granted)| {
                        let keys = if r.keys {
                            shared
                                .leases
                                .read()
                                .unwrap()
                                .keys_of(id)
                                .unwrap_or_default()
                        } else {
                            Vec::new()
                        };
                        (left, granted, keys)
                    })
            }
        };
        let header = Some(shared.header());
        return match (found, &call) {
            (Err(LeaseError::NotFound), _) if !waited => {
                waited = true;
                wait_applied(shared).await;
                continue;
            }
            (Err(LeaseError::NotPrimary), _) => refused(&ApiError::NotLeader(0).into()),
            (Err(_), Call::KeepAlive(_)) => LeaseAnswer {
                keep_alive: Some(pb::LeaseKeepAliveResponse { header, id, ttl: 0 }),
                ..Default::default()
            },
            (Err(_), Call::TimeToLive(_)) => LeaseAnswer {
                time_to_live: Some(pb::LeaseTimeToLiveResponse {
                    header,
                    id,
                    ttl: -1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            (Ok((ttl, _, _)), Call::KeepAlive(_)) => LeaseAnswer {
                keep_alive: Some(pb::LeaseKeepAliveResponse { header, id, ttl }),
                ..Default::default()
            },
            (Ok((ttl, granted_ttl, keys)), Call::TimeToLive(_)) => LeaseAnswer {
                time_to_live: Some(pb::LeaseTimeToLiveResponse {
                    header,
                    id,
                    ttl,
                    granted_ttl,
                    keys,
                }),
                ..Default::default()
            },
        };
    }
}

/// A peer client of the leader with this ID.
type LeaderClient = (u64, PeerClient<tonic::transport::Channel>);

/// The Lease gRPC service.
#[derive(Clone)]
pub struct LeaseService {
    pub api: Api,
    /// A connection to the leader's peer port, kept while it stays the leader.
    leader: Arc<tokio::sync::Mutex<Option<LeaderClient>>>,
}

impl LeaseService {
    /// One keep-alive stream: each request answered in turn, until the client ends its
    /// requests (the gRPC service and the JSON gateway both serve through this).
    pub fn keep_alive_stream(
        &self,
        mut incoming: impl futures::Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>>
            + Send
            + Unpin
            + 'static,
        needs_leader: bool,
    ) -> Result<KeepAliveStream, Status> {
        use futures::StreamExt;
        self.api.refuse_learner()?;
        let svc = self.clone();
        let lost = crate::watch::leader_lost(
            self.api.node.shared.clone(),
            needs_leader,
            self.api.election_timeout,
        );
        let out = async_stream::try_stream! {
            tokio::pin!(lost);
            loop {
                let r = tokio::select! {
                    biased;
                    _ = &mut lost => Err(Status::from(ApiError::NoLeader)),
                    r = incoming.next() => r.transpose(),
                };
                let Some(r) = r? else { break };
                yield svc.keep_alive_once(r.id).await?;
            }
        };
        Ok(Box::pin(out))
    }

    pub fn new(api: Api) -> LeaseService {
        LeaseService {
            api,
            leader: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    fn shared(&self) -> &Shared {
        &self.api.node.shared
    }

    /// Answers `call` here if this member leads, else asks the leader; retried through
    /// leader changes until the request timeout.
    async fn leader_answer(&self, call: Call) -> Result<LeaseAnswer, Status> {
        let deadline = tokio::time::Instant::now() + self.api.request_timeout;
        loop {
            let status = self.shared().status();
            let answer = if status.leader == 0 {
                None
            } else if status.leader == self.shared().member_id {
                Some(answer_on_leader(self.shared(), call).await)
            } else {
                self.forward(status.leader, call).await.ok()
            };
            match answer {
                Some(a) if a.error.is_empty() => return Ok(a),
                Some(a) if a.error != ApiError::NotLeader(0).to_string() => {
                    return Err(Status::new(tonic::Code::from(a.grpc_code), a.error))
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let e = if self.shared().status().leader == 0 {
                    ApiError::NoLeader
                } else {
                    ApiError::Timeout
                };
                return Err(e.into());
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn forward(&self, leader: u64, call: Call) -> Result<LeaseAnswer, String> {
        let mut cached = self.leader.lock().await;
        if cached.as_ref().is_none_or(|(id, _)| *id != leader) {
            let urls = self
                .shared()
                .members
                .read()
                .unwrap()
                .get(leader)
                .map(|m| m.peer_urls.clone())
                .unwrap_or_default();
            let client = crate::transport::peer_client(&urls, &self.api.peer_tls).await?;
            *cached = Some((leader, client));
        }
        let (_, client) = cached.as_mut().expect("just set");
        let req = LeaseForwardRequest {
            cluster_id: self.shared().cluster_id,
            from: self.shared().member_id,
            call: Some(call),
        };
        match tokio::time::timeout(self.api.request_timeout, client.lease_forward(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(e)) => {
                *cached = None;
                Err(e.message().to_string())
            }
            Err(_) => {
                *cached = None;
                Err("the leader did not answer in time".into())
            }
        }
    }

    async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let a = self
            .leader_answer(Call::KeepAlive(pb::LeaseKeepAliveRequest { id }))
            .await?;
        let mut resp = a
            .keep_alive
            .ok_or_else(|| Status::internal("the leader's keep-alive answer is empty"))?;
        resp.header = Some(self.shared().header());
        Ok(resp)
    }
}

pub type KeepAliveStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = req.into_inner();
        self.api.check_quota(crate::api::LEASE_OVERHEAD).await?;
        let len = r.encoded_len();
        self.api
            .write_as(Internal::LeaseGrant(r), len, |a| match a {
                Applied::LeaseGrant(resp) => Ok(resp),
                other => Err(other),
            })
            .await
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let r = req.into_inner();
        let len = r.encoded_len();
        self.api
            .write_as(Internal::LeaseRevoke(r), len, |a| match a {
                Applied::LeaseRevoke(resp) => Ok(resp),
                other => Err(other),
            })
            .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let needs_leader = crate::watch::require_leader(&req, self.shared())?;
        Ok(Response::new(
            self.keep_alive_stream(req.into_inner(), needs_leader)?,
        ))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.api.refuse_learner()?;
        let a = self
            .leader_answer(Call::TimeToLive(req.into_inner()))
            .await?;
        let mut resp = a
            .time_to_live
            .ok_or_else(|| Status::internal("the leader's TimeToLive answer is empty"))?;
        resp.header = Some(self.shared().header());
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.api.refuse_learner()?;
        let leases = self
            .shared()
            .leases
            .read()
            .unwrap()
            .ids()
            .map(|id| pb::LeaseStatus { id })
            .collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.shared().header()),
            leases,
        }))
    }
}
