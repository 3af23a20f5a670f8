//! etcd 3.6's v3 discovery client (`--discovery-token` with `--discovery-endpoints`), sans-IO.
//!
//! Copies etcd 3.6's `server/etcdserver/api/v3discovery/discovery.go` (line references below
//! are to its release-3.6 copy). The discovery service is an etcd cluster spoken to through
//! the v3 API; this machine says which KV requests and which watch to make, with etcd's prost
//! types, and the driver performs them with its v3 client (retrying transient gRPC failures as
//! clientv3 does, and reporting the rest as [`KvReply::Failed`]).
//!
//! # The protocol (`joinCluster`, discovery.go:208-228)
//!
//! Keys (discovery.go:77-95): the size at `/_etcd/registry/<token>/_config/size`, members at
//! `/_etcd/registry/<token>/members/<member id hex>` with the value `name=peerURL[,...]`.
//!
//! 1. `checkCluster` (discovery.go:230-332): Range the size key (missing: "size key not found",
//!    not a positive integer: "size key is bad", neither retried); Range the members prefix
//!    (`WithPrefix`); members sorted by create revision; this member not among the first
//!    `size`: "cluster is full". A success resets the retry counter.
//! 2. `registerSelf` (discovery.go:342-365): a plain Put of its key (no transaction; a restarted
//!    member simply overwrites its own key and keeps its create revision). A success resets
//!    the retry counter.
//! 3. `checkCluster` again.
//! 4. `waitPeers` (discovery.go:367-409): while fewer than `size` members, watch the members
//!    prefix from the listing's revision + 1, adding each event's key; a closed watch is opened
//!    again from the same revision.
//! 5. `getInitClusterStr` (discovery.go:487-501): the first `size` values joined by `,`; each
//!    must be a valid `name=url` list ("invalid peer URL").
//!
//! # Retries (discovery.go:295-301, 334-340, 411-426)
//!
//! Every failed Range or Put (the size, the members, the registration) is logged and retried
//! after `2^min(counter, 8)` seconds ([`super::backoff_ms`]), for ever in practice
//! ([`super::ETCD_MAX_RETRIES`]); the counter is reset by each successful `checkCluster` and
//! registration. Not retried: a missing or bad size, a full cluster.
//!
//! # Differences from etcd
//!
//! - detcd checks the names as v2 discovery does: fewer distinct names than `size` is
//!   [`V3DiscoveryError::DuplicateName`] (etcd 3.6 would hand on an initial cluster with one
//!   member holding several members' URLs, which fails later and less clearly; etcd-facts §9).
//! - Bounds etcd does not have: [`MAX_MEMBERS`], [`MAX_REWATCHES`].
//! - An event without a key-value (etcd would dereference nil) counts as an invalid registry key.

use std::collections::VecDeque;

use super::{
    backoff_ms, duplicate_name_help, duplicated_names, go_duration, path_join, Log, LogLevel,
    ETCD_MAX_RETRIES,
};
use crate::config::parse_initial_cluster;
use crate::proto::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, WatchCreateRequest, WatchResponse,
};

/// etcd's `discoveryPrefix` (discovery.go:37).
pub const DISCOVERY_PREFIX: &str = "/_etcd/registry";

/// etcd 3.6's `--discovery-request-timeout` default (`DefaultDiscoveryRequestTimeOut`,
/// server/embed/config.go): the deadline of each Range and Put.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// detcd's bound on the members a run keeps; past it the run ends with
/// [`V3DiscoveryError::TooManyMembers`].
pub const MAX_MEMBERS: usize = 10_000;

/// detcd's bound on watches closed in a row without bringing a new member (etcd opens the
/// watch again for ever, e.g. on a compacted revision); past it the run ends with
/// [`V3DiscoveryError::WatchFailed`].
pub const MAX_REWATCHES: u32 = 1_000;

/// A KV request for the driver to perform on the discovery cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum KvRequest {
    Range(RangeRequest),
    Put(PutRequest),
}

/// The answer to a [`KvRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum KvReply {
    Range(RangeResponse),
    Put(PutResponse),
    /// The request failed after the client's own retries (gRPC status, deadline,
    /// connection): the text is logged.
    Failed(String),
}

/// News from the watch a [`V3Step::Watch`] opened.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchUpdate {
    /// One `WatchResponse` (created, events, or canceled).
    Response(WatchResponse),
    /// The watch ended without a cancel response (its stream closed; the client gave up).
    Closed(String),
}

/// What the driver should do next.
#[derive(Clone, Debug, PartialEq)]
pub enum V3Step {
    /// Perform this request with this deadline, then call [`V3Discovery::handle_reply`].
    Send { request: KvRequest, timeout_ms: u64 },
    /// Open this watch (closing any earlier one of this machine) and hand every response to
    /// [`V3Discovery::handle_watch`] until the machine sends another step.
    Watch(WatchCreateRequest),
    /// Log `log`, sleep `ms` milliseconds, then call [`V3Discovery::handle_slept`].
    Sleep { ms: u64, log: Log },
    /// Log this line and poll again.
    Log(Log),
    /// The run is over (close the watch if one is open): the initial cluster
    /// (`name=url,...`, in create-revision order), or why not.
    Done(Result<String, V3DiscoveryError>),
}

/// Why v3 discovery failed. Texts are etcd 3.6's (discovery.go:40-46) except where noted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum V3DiscoveryError {
    /// detcd's: `--discovery-token` is empty.
    #[error("--discovery-token must not be empty with --discovery-endpoints")]
    EmptyToken,
    /// `/_etcd/registry/<token>/_config/size` does not exist (`key` names it).
    #[error("discovery: size key not found")]
    SizeNotFound { key: String },
    /// The size is not a positive decimal integer.
    #[error("discovery: size key is bad")]
    BadSizeKey { value: String },
    /// `size` other members registered first.
    #[error("discovery: cluster is full")]
    FullCluster,
    /// The retry counter reached its limit.
    #[error("discovery: too many retries")]
    TooManyRetries,
    /// A member's value is not a valid `name=url` list (etcd's `ErrInvalidURL`, with detcd's
    /// detail).
    #[error("discovery: invalid peer URL ({reason}; registered: {cluster})")]
    InvalidUrl { cluster: String, reason: String },
    /// detcd's: fewer distinct names than `size`.
    #[error("discovery: found duplicate name{}", duplicate_name_help(.duplicated, .cluster, *.size))]
    DuplicateName {
        cluster: String,
        size: u64,
        duplicated: Vec<String>,
    },
    /// detcd's bound [`MAX_MEMBERS`].
    #[error("discovery: more than {limit} members registered; giving up")]
    TooManyMembers { limit: usize },
    /// detcd's bound [`MAX_REWATCHES`]; `reason` is the last close's.
    #[error("discovery: the watch on the members closed {MAX_REWATCHES} times in a row without news ({reason})")]
    WatchFailed { reason: String },
}

impl V3DiscoveryError {
    /// Whether this is etcd's `ErrFullCluster`.
    pub fn is_full_cluster(&self) -> bool {
        matches!(self, V3DiscoveryError::FullCluster)
    }
}

/// One run of etcd 3.6's v3 `JoinCluster` (or `GetCluster`). See the module documentation.
#[derive(Debug)]
pub struct V3Discovery {
    size_key: String,
    members_prefix: String,
    self_key: String,
    local_value: String,
    timeout_ms: u64,
    join: bool,
    retries: u32,
    max_retries: u32,
    members: Vec<Member>,
    out: VecDeque<V3Step>,
    state: State,
}

#[derive(Clone, Debug)]
struct Member {
    key: String,
    value: String,
    create_rev: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    BeforeRegister,
    AfterRegister,
    GetCluster,
}

#[derive(Debug)]
enum State {
    Start,
    Size(Purpose),
    Members { purpose: Purpose, size: u64 },
    Register,
    Watching { size: u64, rev: i64, rewatches: u32 },
    Sleeping(Then),
    Finished,
}

#[derive(Clone, Copy, Debug)]
enum Then {
    Check(Purpose),
    Register,
}

impl V3Discovery {
    /// etcd 3.6's `JoinCluster(lg, cfg, id, config)` (discovery.go:130-165): registers
    /// `member_id` ([`super::member_id_v3`]) with `local_value` under `token` and waits for
    /// the rest. `request_timeout_ms` is `--discovery-request-timeout`
    /// ([`DEFAULT_REQUEST_TIMEOUT_MS`]). Errors: [`V3DiscoveryError::EmptyToken`].
    pub fn join(
        token: &str,
        member_id: u64,
        local_value: &str,
        request_timeout_ms: u64,
    ) -> Result<Self, V3DiscoveryError> {
        Self::new(token, member_id, local_value, request_timeout_ms, true)
    }

    /// etcd 3.6's `GetCluster(lg, cfg)` (discovery.go:98-128): the members without registering;
    /// a full cluster gives its first `size`.
    pub fn get_cluster(token: &str, request_timeout_ms: u64) -> Result<Self, V3DiscoveryError> {
        Self::new(token, 0, "", request_timeout_ms, false)
    }

    /// Replaces etcd's retry limit ([`ETCD_MAX_RETRIES`]).
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    fn new(
        token: &str,
        member_id: u64,
        local_value: &str,
        timeout_ms: u64,
        join: bool,
    ) -> Result<Self, V3DiscoveryError> {
        if token.is_empty() {
            return Err(V3DiscoveryError::EmptyToken);
        }
        let cluster_prefix = path_join(&[DISCOVERY_PREFIX, token]);
        let members_prefix = path_join(&[&cluster_prefix, "members"]);
        Ok(V3Discovery {
            size_key: path_join(&[&cluster_prefix, "_config/size"]),
            self_key: path_join(&[&members_prefix, &crate::ids::format_id(member_id)]),
            members_prefix,
            local_value: local_value.to_string(),
            timeout_ms,
            join,
            retries: 0,
            max_retries: ETCD_MAX_RETRIES,
            members: Vec::new(),
            out: VecDeque::new(),
            state: State::Start,
        })
    }

    /// The key this member registers under.
    pub fn self_key(&self) -> &str {
        &self.self_key
    }

    /// The size key.
    pub fn size_key(&self) -> &str {
        &self.size_key
    }

    /// The next thing to do; `None` while a request, watch or sleep is outstanding.
    pub fn poll_step(&mut self) -> Option<V3Step> {
        if matches!(self.state, State::Start) {
            let p = if self.join {
                Purpose::BeforeRegister
            } else {
                Purpose::GetCluster
            };
            self.check_cluster(p);
        }
        self.out.pop_front()
    }

    /// The answer to the last [`V3Step::Send`]. Ignored when none is outstanding.
    pub fn handle_reply(&mut self, reply: KvReply) {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Size(purpose) => self.on_size(purpose, reply),
            State::Members { purpose, size } => self.on_members(purpose, size, reply),
            State::Register => self.on_register(reply),
            other => self.state = other,
        }
    }

    /// A response or the end of the watch. Ignored when no watch is open.
    pub fn handle_watch(&mut self, update: WatchUpdate) {
        let State::Watching {
            size,
            rev,
            rewatches,
        } = self.state
        else {
            return;
        };
        let (events, closed) = match update {
            WatchUpdate::Response(wr) => {
                let reason = if wr.cancel_reason.is_empty() {
                    format!("watch canceled (compact revision {})", wr.compact_revision)
                } else {
                    wr.cancel_reason.clone()
                };
                (wr.events, wr.canceled.then_some(reason))
            }
            WatchUpdate::Closed(reason) => (Vec::new(), Some(reason)),
        };
        let mut rewatches = rewatches;
        for ev in events {
            let (key, value, create_rev) = match ev.kv {
                Some(kv) => (
                    String::from_utf8_lossy(&kv.key).trim().to_string(),
                    String::from_utf8_lossy(&kv.value).trim().to_string(),
                    kv.create_revision,
                ),
                None => (String::new(), String::new(), 0),
            };
            match self.add(key, value, create_rev) {
                Ok(true) => rewatches = 0,
                Ok(false) => {}
                Err(e) => return self.done(Err(e)),
            }
        }
        let found = self.members.len() as u64;
        if found >= size {
            self.log_found_all(size);
            let r = self.init_cluster(size);
            return self.done(r);
        }
        match closed {
            None => {
                self.state = State::Watching {
                    size,
                    rev,
                    rewatches,
                }
            }
            Some(reason) => {
                // the range over the channel ends; etcd logs, then waitPeers again from `rev`.
                self.log_found_all(size);
                if rewatches >= MAX_REWATCHES {
                    return self.done(Err(V3DiscoveryError::WatchFailed { reason }));
                }
                self.watch(size, rev, rewatches + 1);
            }
        }
    }

    /// A [`V3Step::Sleep`] is over. Ignored when not sleeping.
    pub fn handle_slept(&mut self) {
        if let State::Sleeping(then) = self.state {
            match then {
                Then::Check(p) => self.check_cluster(p),
                Then::Register => self.register(),
            }
        }
    }

    // --- steps -------------------------------------------------------------------------------

    fn send(&mut self, request: KvRequest, state: State) {
        self.out.push_back(V3Step::Send {
            request,
            timeout_ms: self.timeout_ms,
        });
        self.state = state;
    }

    fn log(&mut self, level: LogLevel, msg: &str, fields: Vec<(&'static str, String)>) {
        self.out
            .push_back(V3Step::Log(Log::zap(level, msg, fields)));
    }

    /// Ends the run with etcd's deferred log line (discovery.go:137-150).
    fn done(&mut self, result: Result<String, V3DiscoveryError>) {
        let (verb, ok) = if self.join {
            ("join cluster", "joined cluster")
        } else {
            ("get cluster", "got cluster")
        };
        match &result {
            Ok(c) => self.log(
                LogLevel::Info,
                &format!("discovery {ok} successfully"),
                vec![("cluster", c.clone())],
            ),
            Err(e) => {
                let cluster = match e {
                    V3DiscoveryError::InvalidUrl { cluster, .. }
                    | V3DiscoveryError::DuplicateName { cluster, .. } => cluster.clone(),
                    _ => String::new(),
                };
                self.log(
                    LogLevel::Error,
                    &format!("discovery failed to {verb}"),
                    vec![("cluster", cluster), ("error", e.to_string())],
                )
            }
        }
        self.out.push_back(V3Step::Done(result));
        self.state = State::Finished;
    }

    /// getClusterSize (discovery.go:230-255).
    fn check_cluster(&mut self, purpose: Purpose) {
        let req = RangeRequest {
            key: self.size_key.clone().into_bytes(),
            ..Default::default()
        };
        self.send(KvRequest::Range(req), State::Size(purpose));
    }

    fn on_size(&mut self, purpose: Purpose, reply: KvReply) {
        let resp = match reply {
            KvReply::Range(r) => r,
            KvReply::Failed(e) => {
                let key = self.size_key.clone();
                self.log(
                    LogLevel::Warn,
                    "failed to get cluster size from discovery service",
                    vec![("clusterSizeKey", key), ("error", e)],
                );
                return self.retry("cluster status check", Then::Check(purpose));
            }
            KvReply::Put(_) => return self.retry_unexpected(Then::Check(purpose)),
        };
        let Some(kv) = resp.kvs.first() else {
            let key = self.size_key.clone();
            return self.done(Err(V3DiscoveryError::SizeNotFound { key }));
        };
        let value = String::from_utf8_lossy(&kv.value).into_owned();
        match parse_go_int(&value) {
            Some(size) if size > 0 => {
                let req = RangeRequest {
                    key: self.members_prefix.clone().into_bytes(),
                    range_end: prefix_range_end(self.members_prefix.as_bytes()),
                    ..Default::default()
                };
                self.send(
                    KvRequest::Range(req),
                    State::Members {
                        purpose,
                        size: size as u64,
                    },
                );
            }
            _ => self.done(Err(V3DiscoveryError::BadSizeKey { value })),
        }
    }

    /// getClusterMembers and the rest of checkCluster (discovery.go:257-293, 303-332).
    fn on_members(&mut self, purpose: Purpose, size: u64, reply: KvReply) {
        let resp = match reply {
            KvReply::Range(r) => r,
            KvReply::Failed(e) => {
                let prefix = self.members_prefix.clone();
                self.log(
                    LogLevel::Warn,
                    "failed to get cluster members from discovery service",
                    vec![("membersKeyPrefix", prefix), ("error", e)],
                );
                return self.retry("cluster status check", Then::Check(purpose));
            }
            KvReply::Put(_) => return self.retry_unexpected(Then::Check(purpose)),
        };
        self.members.clear();
        for kv in resp.kvs {
            let key = String::from_utf8_lossy(&kv.key).trim().to_string();
            let value = String::from_utf8_lossy(&kv.value).trim().to_string();
            if let Err(e) = self.add(key, value, kv.create_revision) {
                return self.done(Err(e));
            }
        }
        let rev = resp.header.map_or(0, |h| h.revision);
        self.retries = 0;
        // find self position (discovery.go:319-331)
        let mut full = false;
        for (idx, m) in self.members.iter().enumerate() {
            if m.key == self.self_key {
                break;
            }
            if idx as u64 >= size - 1 {
                full = true;
                break;
            }
        }
        match (purpose, full) {
            (Purpose::GetCluster, true) => {
                let r = self.init_cluster(size);
                self.done(r)
            }
            (_, true) => self.done(Err(V3DiscoveryError::FullCluster)),
            (Purpose::BeforeRegister, false) => self.register(),
            (_, false) => self.wait_peers(size, rev),
        }
    }

    /// registerSelf (discovery.go:342-365): a plain Put.
    fn register(&mut self) {
        let req = PutRequest {
            key: self.self_key.clone().into_bytes(),
            value: self.local_value.clone().into_bytes(),
            ..Default::default()
        };
        self.send(KvRequest::Put(req), State::Register);
    }

    fn on_register(&mut self, reply: KvReply) {
        match reply {
            KvReply::Put(_) => {
                self.retries = 0;
                let (k, v) = (self.self_key.clone(), self.local_value.clone());
                self.log(
                    LogLevel::Info,
                    "register member itself successfully",
                    vec![("memberKey", k), ("memberInfo", v)],
                );
                self.check_cluster(Purpose::AfterRegister);
            }
            KvReply::Failed(e) => {
                let k = self.self_key.clone();
                self.log(
                    LogLevel::Warn,
                    "failed to register members itself to the discovery service",
                    vec![("memberKey", k), ("error", e)],
                );
                self.retry("register member itself", Then::Register);
            }
            KvReply::Range(_) => self.retry_unexpected(Then::Register),
        }
    }

    /// joinCluster's loop (discovery.go:223-225; getCluster's, 201-203): done, or waitPeers.
    fn wait_peers(&mut self, size: u64, rev: i64) {
        if self.members.len() as u64 >= size {
            let r = self.init_cluster(size);
            return self.done(r);
        }
        self.watch(size, rev, 0);
    }

    /// waitPeers' start (discovery.go:367-378).
    fn watch(&mut self, size: u64, rev: i64, rewatches: u32) {
        let found = self.members.len();
        self.log(
            LogLevel::Info,
            "waiting for peers from discovery service",
            vec![
                ("clusterSize", size.to_string()),
                ("found-peers", found.to_string()),
            ],
        );
        self.out.push_back(V3Step::Watch(WatchCreateRequest {
            key: self.members_prefix.clone().into_bytes(),
            range_end: prefix_range_end(self.members_prefix.as_bytes()),
            start_revision: rev.saturating_add(1),
            ..Default::default()
        }));
        self.state = State::Watching {
            size,
            rev,
            rewatches,
        };
    }

    fn log_found_all(&mut self, size: u64) {
        let found = self.members.len();
        self.log(
            LogLevel::Info,
            "found all needed peers from discovery service",
            vec![
                ("clusterSize", size.to_string()),
                ("found-peers", found.to_string()),
            ],
        );
    }

    /// The retry functions (discovery.go:295-301, 334-340) and logAndBackoffForRetry
    /// (discovery.go:411-426).
    fn retry(&mut self, step: &str, then: Then) {
        if self.retries >= self.max_retries {
            return self.done(Err(V3DiscoveryError::TooManyRetries));
        }
        self.retries = self.retries.saturating_add(1);
        let ms = backoff_ms(self.retries);
        let log = Log::zap(
            LogLevel::Warn,
            "retry connecting to discovery service",
            vec![("reason", step.to_string()), ("backoff", go_duration(ms))],
        );
        self.out.push_back(V3Step::Sleep { ms, log });
        self.state = State::Sleeping(then);
    }

    /// A reply of the wrong kind (a driver bug): treated as a failed request.
    fn retry_unexpected(&mut self, then: Then) {
        let step = match then {
            Then::Check(_) => "cluster status check",
            Then::Register => "register member itself",
        };
        self.retry(step, then);
    }

    /// clusterInfo.add (discovery.go:444-475) with its log lines. `Ok(true)` when added.
    fn add(
        &mut self,
        key: String,
        value: String,
        create_rev: i64,
    ) -> Result<bool, V3DiscoveryError> {
        let err = if !key.starts_with(&self.members_prefix) {
            Some("invalid peer registry key")
        } else if !value.contains('=') {
            Some("invalid peer info returned from discovery service")
        } else if self.members.iter().any(|m| m.key == key) {
            Some("found duplicate peer from discovery service")
        } else {
            None
        };
        let fields = vec![("memberKey", key.clone()), ("memberInfo", value.clone())];
        if let Some(e) = err {
            self.log(LogLevel::Warn, e, fields);
            return Ok(false);
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(V3DiscoveryError::TooManyMembers { limit: MAX_MEMBERS });
        }
        self.log(LogLevel::Info, "found peer from discovery service", fields);
        self.members.push(Member {
            key,
            value,
            create_rev,
        });
        self.members.sort_by_key(|m| m.create_rev);
        Ok(true)
    }

    /// getInitClusterStr (discovery.go:487-501), plus detcd's name check.
    fn init_cluster(&self, size: u64) -> Result<String, V3DiscoveryError> {
        let take = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(self.members.len());
        let values: Vec<&str> = self.members[..take]
            .iter()
            .map(|m| m.value.as_str())
            .collect();
        let cluster = values.join(",");
        match parse_initial_cluster(&cluster) {
            Err(e) => Err(V3DiscoveryError::InvalidUrl {
                reason: e.to_string(),
                cluster,
            }),
            Ok(ms) if ms.len() != take => Err(V3DiscoveryError::DuplicateName {
                duplicated: duplicated_names(values.iter().copied()),
                cluster,
                size,
            }),
            Ok(_) => Ok(cluster),
        }
    }
}

/// Go's `strconv.ParseInt(s, 10, 0)` on a 64-bit machine: an optional sign, ASCII digits.
fn parse_go_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// clientv3's `GetPrefixRangeEnd`: the key with its last byte below 0xff incremented and the
/// rest dropped; `\0` (to the end of the keyspace) if there is none.
pub fn prefix_range_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    for i in (0..end.len()).rev() {
        if end[i] < 0xff {
            end[i] += 1;
            end.truncate(i + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
#[path = "v3_tests.rs"]
mod tests;
