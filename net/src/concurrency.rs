//! etcd's Lock and Election services (etcdserver/api/v3lock, v3election), built as etcd
//! builds them: its client-side concurrency recipes (clientv3/concurrency mutex.go,
//! election.go) run inside the member, over this member's own KV, Lease and Watch.
//!
//! - A lock `name` is held by the key `name/<lease hex>` with the smallest create revision
//!   among `name/`; a waiter waits until every key created before its own is deleted.
//! - An election `name` works the same way; the leader's value is its key's value.
//!
//! As etcd's, a request with lease 0 gets a fresh 60 s lease that nobody keeps alive (its
//! `concurrency.NewSession` default, orphaned), and errors go out with gRPC code Unknown.

use crate::api::Api;
use crate::lease::LeaseService;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::watch::LocalWatch;
use detcd_core::proto::etcdserverpb::{
    self as pb, compare, range_request, request_op, response_op, ResponseHeader,
};
use detcd_core::proto::mvccpb::{event::EventType, KeyValue};
use detcd_core::proto::v3electionpb as epb;
use detcd_core::proto::v3lockpb as lpb;
use std::pin::Pin;
use tonic::{Request, Response, Status};

/// concurrency.NewSession's default TTL, for requests that name no lease.
const SESSION_TTL: i64 = 60;

/// clientv3/concurrency ErrElectionNotLeader and friends (all sent with code Unknown).
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// Lock and Election over this member.
#[derive(Clone)]
pub struct Concurrency {
    api: Api,
    leases: LeaseService,
}

/// An error as etcd's v3lock/v3election return them: the text, code Unknown.
fn unknown(e: Status) -> Status {
    Status::unknown(e.message().to_string())
}

/// The end of the range of every key starting with `prefix` (clientv3.GetPrefixRangeEnd).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn op_put(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn op_get(req: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(req)),
    }
}

/// The key of `prefix` created first or last (clientv3.WithFirstCreate / WithLastCreate),
/// optionally among those created at or before `max_create_revision`.
fn get_by_create(
    prefix: &[u8],
    order: range_request::SortOrder,
    max_create: i64,
) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

fn create_revision_is(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn range_of(r: &pb::ResponseOp) -> Option<&pb::RangeResponse> {
    match &r.response {
        Some(response_op::Response::ResponseRange(rr)) => Some(rr),
        _ => None,
    }
}

impl Concurrency {
    pub fn new(api: Api) -> Concurrency {
        Concurrency {
            leases: LeaseService::new(api.clone()),
            api,
        }
    }

    async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        Ok(Kv::txn(&self.api, Request::new(req)).await?.into_inner())
    }

    async fn get(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        Ok(Kv::range(&self.api, Request::new(req)).await?.into_inner())
    }

    /// The lease a request runs under: its own, or a fresh orphaned 60 s one.
    async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let g = Lease::lease_grant(
            &self.leases,
            Request::new(pb::LeaseGrantRequest {
                ttl: SESSION_TTL,
                id: 0,
            }),
        )
        .await?;
        Ok(g.into_inner().id)
    }

    /// Waits until `key` is deleted at or after revision `rev` (concurrency waitDelete).
    async fn wait_delete(&self, key: &[u8], rev: i64) -> Result<(), Status> {
        let mut w = LocalWatch::start(&self.api.node.shared, key.to_vec(), Vec::new(), rev).await?;
        loop {
            let resp = w.next().await?;
            if resp
                .events
                .iter()
                .any(|e| e.r#type == EventType::Delete as i32)
            {
                return Ok(());
            }
        }
    }

    /// Waits until no key of `prefix` created at or before `max_create` is left
    /// (concurrency waitDeletes); returns the header of the read that found none.
    async fn wait_deletes(&self, prefix: &[u8], max_create: i64) -> Result<ResponseHeader, Status> {
        loop {
            let r = self
                .get(get_by_create(
                    prefix,
                    range_request::SortOrder::Descend,
                    max_create,
                ))
                .await?;
            let header = r.header.unwrap_or_default();
            let Some(last) = r.kvs.first() else {
                return Ok(header);
            };
            self.wait_delete(&last.key, header.revision).await?;
        }
    }

    /// concurrency.Mutex.Lock: returns the lock's key and the header of the moment it held.
    async fn lock(&self, name: &[u8], lease: i64) -> Result<(Vec<u8>, ResponseHeader), Status> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{lease:x}").as_bytes());
        let owner = get_by_create(&prefix, range_request::SortOrder::Ascend, 0);
        let resp = self
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![op_put(&key, b"", lease), op_get(owner.clone())],
                failure: vec![
                    op_get(pb::RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    }),
                    op_get(owner),
                ],
            })
            .await?;
        let header = resp.header.unwrap_or_default();
        let my_rev = if resp.succeeded {
            header.revision
        } else {
            resp.responses
                .first()
                .and_then(range_of)
                .and_then(|r| r.kvs.first())
                .map(|kv| kv.create_revision)
                .ok_or_else(|| Status::unknown("lock key vanished"))?
        };
        let first = resp
            .responses
            .get(1)
            .and_then(range_of)
            .and_then(|r| r.kvs.first());
        if first.is_none_or(|kv| kv.create_revision == my_rev) {
            return Ok((key, header));
        }
        // Give the place in line back if the wait fails or the client gives up (the Mutex's
        // Unlock when its context ends): otherwise it would block every later locker until
        // its lease expired.
        let guard = GiveBack::new(self.clone(), key.clone(), None);
        let h = self.wait_deletes(&prefix, my_rev - 1).await?;
        guard.disarm();
        Ok((key, h))
    }

    async fn delete(&self, key: &[u8]) -> Result<pb::DeleteRangeResponse, Status> {
        Ok(Kv::delete_range(
            &self.api,
            Request::new(pb::DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            }),
        )
        .await?
        .into_inner())
    }

    /// concurrency.Election.Leader: the first-created key of the election.
    async fn leader(&self, name: &[u8]) -> Result<pb::RangeResponse, Status> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let r = self
            .get(get_by_create(&prefix, range_request::SortOrder::Ascend, 0))
            .await?;
        if r.kvs.is_empty() {
            return Err(Status::unknown(NO_LEADER));
        }
        Ok(r)
    }

    /// concurrency.Election.Proclaim: a new value, if `leader` still leads.
    async fn proclaim(
        &self,
        leader: &epb::LeaderKey,
        value: &[u8],
    ) -> Result<ResponseHeader, Status> {
        let resp = self
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op_put(&leader.key, value, leader.lease)],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(resp.header.unwrap_or_default())
    }

    /// concurrency.Election.Resign: deletes the leader key if it is still this campaign's.
    async fn resign(&self, leader: &epb::LeaderKey) -> Result<ResponseHeader, Status> {
        let resp = self
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![pb::RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: leader.key.clone(),
                            ..Default::default()
                        },
                    )),
                }],
                failure: vec![],
            })
            .await?;
        Ok(resp.header.unwrap_or_default())
    }

    /// concurrency.Election.Campaign: returns the leader key once this campaign leads.
    async fn campaign(
        &self,
        name: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<(epb::LeaderKey, ResponseHeader), Status> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{lease:x}").as_bytes());
        let resp = self
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![op_put(&key, value, lease)],
                failure: vec![op_get(pb::RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })],
            })
            .await?;
        let header = resp.header.unwrap_or_default();
        let mut leader = epb::LeaderKey {
            name: name.to_vec(),
            key: key.clone(),
            rev: header.revision,
            lease,
        };
        if !resp.succeeded {
            let kv = resp
                .responses
                .first()
                .and_then(range_of)
                .and_then(|r| r.kvs.first())
                .ok_or_else(|| Status::unknown("campaign key vanished"))?;
            leader.rev = kv.create_revision;
            if kv.value != value {
                if let Err(e) = self.proclaim(&leader, value).await {
                    let _ = self.resign(&leader).await;
                    return Err(e);
                }
            }
        }
        // A campaign that fails or is abandoned resigns (etcd's Campaign on a canceled
        // context), so it does not hold up the election until its lease expires.
        let guard = GiveBack::new(self.clone(), leader.key.clone(), Some(leader.rev));
        self.wait_deletes(&prefix, leader.rev - 1).await?;
        guard.disarm();
        Ok((leader, header))
    }
}

/// Deletes a lock or campaign key when dropped armed: the request failed or its client went
/// away while it waited in line. The delete runs on a task of its own (a drop cannot wait).
struct GiveBack {
    owner: Option<(Concurrency, Vec<u8>, Option<i64>)>,
}

impl GiveBack {
    /// `create_rev`: delete only if the key is still the one created then (a campaign's
    /// Resign); None deletes the key outright (a lock's Unlock).
    fn new(owner: Concurrency, key: Vec<u8>, create_rev: Option<i64>) -> GiveBack {
        GiveBack {
            owner: Some((owner, key, create_rev)),
        }
    }

    fn disarm(mut self) {
        self.owner = None;
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        let Some((owner, key, create_rev)) = self.owner.take() else {
            return;
        };
        tokio::spawn(async move {
            let result = match create_rev {
                None => owner.delete(&key).await.map(|_| ()),
                Some(rev) => {
                    let leader = epb::LeaderKey {
                        key: key.clone(),
                        rev,
                        ..Default::default()
                    };
                    owner.resign(&leader).await.map(|_| ())
                }
            };
            if let Err(e) = result {
                tracing::warn!(
                    "giving back {:?} after an abandoned wait failed: {e}",
                    String::from_utf8_lossy(&key)
                );
            }
        });
    }
}

#[tonic::async_trait]
impl Lock for Concurrency {
    async fn lock(
        &self,
        req: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let r = req.into_inner();
        let lease = self.session_lease(r.lease).await.map_err(unknown)?;
        let (key, header) = Concurrency::lock(self, &r.name, lease)
            .await
            .map_err(unknown)?;
        Ok(Response::new(lpb::LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let r = req.into_inner();
        let resp = self.delete(&r.key).await.map_err(unknown)?;
        Ok(Response::new(lpb::UnlockResponse {
            header: resp.header,
        }))
    }
}

type ObserveStream =
    Pin<Box<dyn futures::Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for Concurrency {
    async fn campaign(
        &self,
        req: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let r = req.into_inner();
        let lease = self.session_lease(r.lease).await.map_err(unknown)?;
        let (leader, header) = Concurrency::campaign(self, &r.name, lease, &r.value)
            .await
            .map_err(unknown)?;
        Ok(Response::new(epb::CampaignResponse {
            header: Some(header),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let r = req.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let header = Concurrency::proclaim(self, &leader, &r.value)
            .await
            .map_err(unknown)?;
        Ok(Response::new(epb::ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let r = req.into_inner();
        let resp = Concurrency::leader(self, &r.name).await.map_err(unknown)?;
        Ok(Response::new(epb::LeaderResponse {
            header: resp.header,
            kv: resp.kvs.into_iter().next(),
        }))
    }

    type ObserveStream = ObserveStream;

    /// concurrency.Election.Observe: the current leader, then each new value of its key;
    /// once it is deleted, the next leader (waiting for one if there is none).
    async fn observe(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let name = req.into_inner().name;
        let mut prefix = name.clone();
        prefix.push(b'/');
        let this = self.clone();
        let out = async_stream::try_stream! {
            loop {
                let r = this
                    .get(get_by_create(&prefix, range_request::SortOrder::Ascend, 0))
                    .await
                    .map_err(unknown)?;
                let mut header = r.header.unwrap_or_default();
                let kv: KeyValue = match r.kvs.into_iter().next() {
                    Some(kv) => kv,
                    None => {
                        // Wait for the first put on the election's prefix.
                        let mut w = LocalWatch::start(
                            &this.api.node.shared,
                            prefix.clone(),
                            prefix_end(&prefix),
                            header.revision,
                        )
                        .await?;
                        let mut found = None;
                        while found.is_none() {
                            let resp = w.next().await.map_err(unknown)?;
                            header = resp.header.unwrap_or_default();
                            found = resp
                                .events
                                .into_iter()
                                .find(|e| e.r#type == EventType::Put as i32)
                                .and_then(|e| e.kv);
                        }
                        let kv = found.expect("found");
                        header.revision = kv.mod_revision;
                        kv
                    }
                };
                let key = kv.key.clone();
                yield epb::LeaderResponse { header: Some(header), kv: Some(kv) };
                let mut w = LocalWatch::start(
                    &this.api.node.shared,
                    key,
                    Vec::new(),
                    header.revision + 1,
                )
                .await?;
                'leader: loop {
                    let resp = w.next().await.map_err(unknown)?;
                    for ev in resp.events {
                        if ev.r#type == EventType::Delete as i32 {
                            break 'leader;
                        }
                        yield epb::LeaderResponse { header: resp.header, kv: ev.kv };
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn resign(
        &self,
        req: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let r = req.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let header = Concurrency::resign(self, &leader).await.map_err(unknown)?;
        Ok(Response::new(epb::ResignResponse {
            header: Some(header),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends_follow_clientv3() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
