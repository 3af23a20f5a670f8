//! etcd 3.4's v2 discovery client (`--discovery <url>`), sans-IO.
//!
//! Copies `etcdserver/api/v2discovery/discovery.go` of etcd 3.4 (Debian's 3.4.23 source;
//! unchanged in substance in 3.6's `server/etcdserver/api/v2discovery/discovery.go`) together
//! with the parts of etcd's v2 client it relies on (`client/client.go`: `httpClusterClient.Do`,
//! `redirectFollowingHTTPClient.Do`; `client/keys.go`: the actions, `httpWatcher.Next`,
//! `unmarshalHTTPResponse`). Line references below are to etcd 3.4's `discovery.go`.
//!
//! # The protocol (`JoinCluster` and `joinCluster`, discovery.go:63-69, 161-186)
//!
//! With the discovery URL `scheme://host[:port]/<path>`, etcd's client talks to the endpoint
//! `scheme://host[:port]` with an empty key prefix (`client.NewKeysAPIWithPrefix(c, "")`,
//! discovery.go:150), so the URL's path *is* the key path: a URL
//! `https://myetcd.local/v2/keys/discovery/<token>` sends its requests to
//! `https://myetcd.local/v2/keys/discovery/<token>/...`, and the public service's
//! `https://discovery.etcd.io/<token>` to `https://discovery.etcd.io/<token>/...` (the public
//! service maps those onto its own keys API). Requests, in order:
//!
//! 1. `checkCluster` (discovery.go:221-296): `GET <path>/_config/size`, then `GET <path>`;
//!    the children except `_config`, sorted by `createdIndex`; if this member is not among the
//!    first `size` of them and `size` are already there: "cluster is full".
//! 2. `createSelf` (discovery.go:204-219): `PUT <path>/<member id hex>?prevExist=false` with
//!    the form body `value=<name>=<peer url>[,...]`; error code 105 (key exists) means
//!    "found duplicate id". Then a wait on its own key (`wait=true&waitIndex=<createdIndex>`),
//!    "ensure self appears on the server we connected to".
//! 3. `checkCluster` again.
//! 4. `waitNodes` (discovery.go:339-412): `GET <path>?recursive=true&wait=true&waitIndex=<X-Etcd-Index+1>`,
//!    each answer is one more member, until `size`.
//! 5. `nodesToCluster` (discovery.go:418-431): the members' values joined by `,` in that order
//!    (not sorted); a value that is not a valid `name=url` list is "invalid URL", fewer
//!    distinct names than `size` is "found duplicate name".
//!
//! # Retries (discovery.go:298-337)
//!
//! One retry counter for the whole run, never reset. A `GET` of step 1, 3 or 4 that fails at the
//! connection level, is answered with a 5xx status, or whose redirects fail, is a
//! `client.ClusterError` (client.go:332-399): etcd logs it, increments the counter, sleeps
//! `2^min(counter, 8)` seconds ([`super::backoff_ms`]) and starts `checkCluster` over (from
//! step 4, a whole new `checkCluster` then `waitNodes`). What etcd does **not** retry, and so
//! ends the run with an error:
//! - a request that ran into its 5 s deadline (`client.DefaultRequestTimeout`; the client
//!   returns `context.DeadlineExceeded`, not a `ClusterError`, client.go:366-373);
//! - anything that fails in step 2, the `PUT` and the wait on its own key (discovery.go:169:
//!   "Fails, even on a timeout, if createSelf times out"; the `PUT` is one-shot, so the raw
//!   error comes back, client.go:384-392);
//! - an answer that is not JSON, an empty answer to a plain `GET`, an etcd error (code 100 on
//!   the size key is the missing size, below), a bad `X-Etcd-Index` header.
//!
//! # Differences from etcd, all at inputs etcd does not expect
//!
//! - A missing size key is reported with the clustering guide's sentence (etcd-facts §5
//!   decision) instead of etcd 3.4's raw `100: Key not found (...) [n]`.
//! - "Duplicate name" carries a sentence on unique `--name`s (etcd-facts §9).
//! - A JSON answer without a `node` (etcd dereferences nil and panics) counts as invalid JSON.
//! - Discovery URLs that are not `http(s)://host[:port]/<path>` (no path, a query, a fragment,
//!   user info, spaces) are refused up front with [`DiscoveryError::BadUrl`]; etcd would retry
//!   "unsupported protocol scheme" forever or send odd requests.
//! - Bounds etcd does not have: [`MAX_BODY_BYTES`], [`MAX_NODES`],
//!   [`MAX_EMPTY_WATCH_RESPONSES`] (see each).
//! - A redirect's `Location` must be an absolute `http(s)` URL (Go would try a relative one and
//!   fail at the transport, which counts the same).
//! - `ClusterError` texts lose Go's trailing newline.

use std::collections::VecDeque;

use serde::Deserialize;

use super::{
    backoff_ms, canonical_url_path, duplicate_name_help, duplicated_names, go_duration, path_base,
    path_join, query_escape, Log, LogLevel, ETCD_MAX_RETRIES,
};
use crate::config::parse_initial_cluster;

/// etcd's `client.DefaultRequestTimeout` (client/client.go:47): the deadline of the size and
/// directory `GET`s and of the registration `PUT` (discovery.go:205, 223, 255).
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// The dial timeout of etcd's discovery transport (`transport.NewTransport(transport.TLSInfo{},
/// 30*time.Second)`, discovery.go:137). The waits have no other deadline.
pub const DIAL_TIMEOUT_MS: u64 = 30_000;

/// etcd's `DefaultCheckRedirect` (client/client.go:169-174): up to 10 redirects are followed;
/// an 11th 3xx answer is "client: too many redirects".
pub const MAX_REDIRECTS: u32 = 10;

/// detcd's bound on one answer's body. A body longer than this is treated as a failed request
/// (the driver should stop reading there and report [`Transport::Failed`]).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// detcd's bound on the members a run keeps (the token directory's listing and those the waits
/// add): past it the run ends with [`DiscoveryError::TooManyNodes`]. No etcd cluster has
/// anywhere near this many members.
pub const MAX_NODES: usize = 10_000;

/// detcd's bound on consecutive empty answers to one wait. etcd's watcher re-sends the wait
/// for ever on an empty body (client/keys.go:450-466); past this many in a row, a wait for
/// other members counts the empties as a failed request (logged, backed off, retried like a
/// 5xx), and the wait on the member's own key ends the run with the empty-body error.
pub const MAX_EMPTY_WATCH_RESPONSES: u32 = 1_000;

/// The HTTP method of a [`HttpRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

/// A request for the driver to perform. Send no other headers than the driver's HTTP client's
/// usual ones; a `PUT` carries `Content-Type: application/x-www-form-urlencoded`. Go through
/// `--discovery-proxy` if set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    /// The absolute URL, query included (`http://host:2379/v2/keys/d/tok?recursive=true&...`).
    pub url: String,
    /// The `application/x-www-form-urlencoded` body of a `PUT` (`value=...`); `None` for a GET.
    pub form_body: Option<String>,
    /// The whole request's deadline (connect, headers and body): report
    /// [`Transport::TimedOut`] when it passes. `None` for the waits, which may take as long as
    /// the other members take to start.
    pub timeout_ms: Option<u64>,
    /// The deadline of the TCP (and TLS) connect alone: report [`Transport::Failed`] when it
    /// passes ([`DIAL_TIMEOUT_MS`]).
    pub connect_timeout_ms: u64,
}

/// The answer to a [`HttpRequest`] (any status; do not follow redirects, the machine does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// The `X-Etcd-Index` header's value, untouched (the machine parses it as etcd does).
    pub etcd_index: Option<String>,
    /// The `Location` header's value, for a 3xx status.
    pub location: Option<String>,
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
}

/// What became of the last [`Step::Send`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// An HTTP answer arrived.
    Response(HttpResponse),
    /// No answer: connection refused or reset, DNS, TLS, the connect timeout, a body cut
    /// short. The text is the error as the driver saw it, for the logs
    /// (`dial tcp 10.0.0.1:2379: connect: connection refused`).
    Failed(String),
    /// The request's [`HttpRequest::timeout_ms`] passed first (Go's
    /// `context.DeadlineExceeded`).
    TimedOut,
}

/// What the driver should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Perform this request and hand its outcome to [`V2Discovery::handle_response`].
    Send(HttpRequest),
    /// Log `log`, sleep `ms` milliseconds, then call [`V2Discovery::handle_slept`].
    Sleep { ms: u64, log: Log },
    /// Log this line and poll again.
    Log(Log),
    /// The run is over: the initial cluster (`name=url,name=url`, as etcd's `JoinCluster`
    /// returns it: values in discovery order, not sorted; `""` for a size of 0), or why not.
    Done(Result<String, DiscoveryError>),
}

/// Why v2 discovery failed. The texts are etcd's (its `errors.New` values in discovery.go:41-53
/// and the v2 client's error texts) except where noted; the server prints them as
/// `failed to join discovery cluster (<text>)` (etcdserver/errors.go `DiscoveryError`), except
/// the missing size, whose sentence the clustering guide prints alone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// detcd's: the discovery URL is not `http(s)://host[:port]/<path>`.
    #[error("invalid discovery URL {url:?}: {reason} (expected http://host[:port]/<token path> or https://...)")]
    BadUrl { url: String, reason: &'static str },
    /// `<path>/_config/size` does not exist (error code 100). The guide's sentence (etcd-facts
    /// §5 decision); `url` is the discovery URL as given.
    #[error("the cluster doesn't have a size configuration value in {url}/_config")]
    SizeNotFound { url: String },
    /// The size key's value is not an unsigned decimal (etcd's `ErrBadSizeKey`).
    #[error("discovery: size key is bad")]
    BadSizeKey { value: String },
    /// The size `GET` was answered with something that is not the v2 keys API's JSON (etcd's
    /// `ErrBadDiscoveryEndpoint`).
    #[error("discovery: bad discovery endpoint")]
    BadDiscoveryEndpoint,
    /// `size` other members registered first (etcd's `ErrFullCluster`). etcd 3.4 then falls
    /// back to a proxy (`--discovery-fallback proxy`, its default) or exits 1.
    #[error("discovery: cluster is full")]
    FullCluster,
    /// This member's ID is already registered (code 105 on the `PUT`; etcd's
    /// `ErrDuplicateID`): usually a member restarted with a lost data dir.
    #[error("discovery: found duplicate id")]
    DuplicateId,
    /// Fewer distinct names than `size` among the members (etcd's `ErrDuplicateName`), with
    /// detcd's sentence on why; `cluster` is the joined values.
    #[error("discovery: found duplicate name{}", duplicate_name_help(.duplicated, .cluster, *.size))]
    DuplicateName {
        cluster: String,
        size: u64,
        duplicated: Vec<String>,
    },
    /// A member's value is not a valid `name=url` list (etcd's `ErrInvalidURL`, with detcd's
    /// detail).
    #[error("discovery: invalid URL ({reason}; registered: {cluster})")]
    InvalidUrl { cluster: String, reason: String },
    /// The retry counter reached its limit (etcd's `ErrTooManyRetries`).
    #[error("discovery: too many retries")]
    TooManyRetries,
    /// The keys API answered with an error (the v2 client's `client.Error` text).
    #[error("{code}: {message} ({cause}) [{index}]")]
    Etcd {
        code: i64,
        message: String,
        cause: String,
        index: u64,
    },
    /// etcd's `client.ErrInvalidJSON`.
    #[error("client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint")]
    InvalidJson,
    /// etcd's `client.ErrEmptyBody`.
    #[error("client: response body is empty")]
    EmptyBody,
    /// A request's 5 s deadline passed (Go's `context.DeadlineExceeded`; not retried by etcd).
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    /// A failure of the wait on the member's own key (etcd's `client.ClusterError` text).
    #[error("client: etcd cluster is unavailable or misconfigured; error #0: {0}")]
    ClusterUnavailable(String),
    /// The registration `PUT` failed at the transport or with a 5xx (the raw error, as the
    /// one-shot request returns it).
    #[error("{0}")]
    Request(String),
    /// The `X-Etcd-Index` header is not an unsigned decimal (Go's `strconv.ParseUint` error).
    #[error("strconv.ParseUint: parsing {value:?}: {reason}")]
    BadIndexHeader { value: String, reason: &'static str },
    /// detcd's bound [`MAX_NODES`].
    #[error("discovery: more than {limit} members registered or awaited; giving up")]
    TooManyNodes { limit: usize },
}

impl DiscoveryError {
    /// Whether this is etcd's `ErrFullCluster`, on which etcd 3.4 falls back to a proxy when
    /// `--discovery-fallback proxy`.
    pub fn is_full_cluster(&self) -> bool {
        matches!(self, DiscoveryError::FullCluster)
    }

    /// What etcd 3.4 logs after a failed join before it exits 1 (etcdmain/etcd.go:185-239),
    /// `name`, `discovery_url` and `data_dir` being the member's flags. The error line itself
    /// (`failed to join discovery cluster (<err>)`) comes first for errors other than duplicate
    /// ID and name, as etcd prints it.
    pub fn etcd_exit_advice(&self, name: &str, discovery_url: &str, data_dir: &str) -> Vec<Log> {
        let capn = |level, text: String, msg: &str, fields: Vec<(&'static str, String)>| Log {
            level,
            text,
            msg: msg.to_string(),
            fields,
        };
        let joined = format!("failed to join discovery cluster ({self})");
        match self {
            DiscoveryError::DuplicateId => vec![
                capn(
                    LogLevel::Error,
                    format!("member {name:?} has previously registered with discovery service token ({discovery_url})."),
                    "member has been registered with discovery service",
                    vec![
                        ("name", name.to_string()),
                        ("discovery-token", discovery_url.to_string()),
                        ("error", self.to_string()),
                    ],
                ),
                capn(
                    LogLevel::Error,
                    format!("But etcd could not find valid cluster configuration in the given data dir ({data_dir})."),
                    "but could not find valid cluster configuration",
                    vec![("data-dir", data_dir.to_string())],
                ),
                capn(
                    LogLevel::Info,
                    "Please check the given data dir path if the previous bootstrap succeeded".into(),
                    "check data dir if previous bootstrap succeeded",
                    vec![],
                ),
                capn(
                    LogLevel::Info,
                    "or use a new discovery token if the previous bootstrap failed.".into(),
                    "or use a new discovery token if previous bootstrap failed",
                    vec![],
                ),
            ],
            DiscoveryError::DuplicateName { .. } => vec![
                capn(
                    LogLevel::Error,
                    format!("member with duplicated name has registered with discovery service token({discovery_url})."),
                    "member with duplicated name has already been registered",
                    vec![
                        ("discovery-token", discovery_url.to_string()),
                        ("error", self.to_string()),
                    ],
                ),
                capn(
                    LogLevel::Error,
                    "please check (cURL) the discovery token for more information.".into(),
                    "cURL the discovery token URL for details",
                    vec![],
                ),
                capn(
                    LogLevel::Error,
                    "please do not reuse the discovery token and generate a new one to bootstrap the cluster.".into(),
                    "do not reuse discovery token; generate a new one to bootstrap a cluster",
                    vec![],
                ),
            ],
            _ => vec![
                capn(
                    LogLevel::Error,
                    joined.clone(),
                    "failed to bootstrap; discovery token was already used",
                    vec![
                        ("discovery-token", discovery_url.to_string()),
                        ("error", joined),
                    ],
                ),
                capn(
                    LogLevel::Info,
                    format!("discovery token {discovery_url} was used, but failed to bootstrap the cluster."),
                    "do not reuse discovery token; generate a new one to bootstrap a cluster",
                    vec![],
                ),
                capn(
                    LogLevel::Info,
                    "please generate a new discovery token and try to bootstrap again.".into(),
                    "do not reuse discovery token; generate a new one to bootstrap a cluster",
                    vec![],
                ),
            ],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------------

/// One run of etcd's v2 `JoinCluster` (or `GetCluster`) as a state machine. See the module
/// documentation for the protocol and [`super`] for the driving loop.
#[derive(Debug)]
pub struct V2Discovery {
    /// The discovery URL as given (messages).
    durl: String,
    /// `scheme://host[:port]`: etcd's `d.url` after `u.Path = ""` (logs, 5xx texts).
    endpoint: String,
    /// The URL's path: etcd's `d.cluster` (discovery.go:129).
    token: String,
    /// `path.Join("/", token, "_config", "size")`.
    size_key: String,
    /// `path.Join("/", token, <id hex>)`: etcd's `selfKey()` (discovery.go:414-416).
    self_key: String,
    /// `path.Base(self_key)`: the member ID in hex.
    self_base: String,
    local_value: String,
    mode: Mode,
    retries: u32,
    max_retries: u32,
    out: VecDeque<Step>,
    state: State,
    /// The simulator's mutation `discovery-ignore-size` (see [`V2Discovery::with_size_ignored`]).
    ignore_size: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Join,
    GetCluster,
}

/// Which call of `checkCluster` is running, i.e. what follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// joinCluster's first, the "fast path" (discovery.go:164): then createSelf.
    BeforeRegister,
    /// joinCluster's second (discovery.go:175): then waitNodes.
    AfterRegister,
    /// waitNodesRetry's (discovery.go:330): then waitNodes; a full cluster is an error.
    WaitRetry,
    /// getCluster's (discovery.go:189): a full cluster returns its first `size` members.
    GetCluster,
}

#[derive(Debug)]
enum Op {
    GetSize(Purpose),
    GetDir {
        purpose: Purpose,
        size: u64,
    },
    Create,
    SelfWatch {
        empties: u32,
    },
    Wait {
        size: u64,
        all: Vec<Node>,
        empties: u32,
    },
}

#[derive(Debug)]
enum State {
    /// Nothing polled yet.
    Start,
    /// `original` was sent (possibly redirected `redirects` times); its answer goes to `op`.
    InFlight {
        op: Op,
        original: HttpRequest,
        redirects: u32,
    },
    /// A backoff sleep; then `checkCluster` for this purpose.
    Sleeping(Purpose),
    /// `Done` was queued.
    Finished,
}

/// What `checkCluster` found.
enum Check {
    Ok {
        nodes: Vec<Node>,
        size: u64,
        index: u64,
    },
    /// `ErrFullCluster`, with the first `size` nodes (getCluster uses them).
    Full {
        nodes: Vec<Node>,
        size: u64,
    },
    Err(DiscoveryError),
}

/// A v2 node as discovery uses it (client/keys.go `Node`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    key: String,
    value: String,
    created_index: u64,
    modified_index: u64,
}

/// A successful keys API answer (client/keys.go `Response`).
struct KeysResponse {
    node: Node,
    children: Vec<Node>,
    /// `X-Etcd-Index`, 0 when absent.
    index: u64,
}

/// How a request failed, before the operation decides what it means.
enum KeysErr {
    /// Transport failure, 5xx, or a redirect problem: one `ClusterError` entry (or the raw
    /// error of a one-shot request).
    Failed(String),
    Deadline,
    Etcd {
        code: i64,
        message: String,
        cause: String,
        index: u64,
    },
    InvalidJson,
    EmptyBody,
    BadIndex {
        value: String,
        reason: &'static str,
    },
}

impl KeysErr {
    /// The error etcd returns for this failure; `one_shot` for the registration `PUT`.
    fn into_error(self, one_shot: bool) -> DiscoveryError {
        match self {
            KeysErr::Failed(e) if one_shot => DiscoveryError::Request(e),
            KeysErr::Failed(e) => DiscoveryError::ClusterUnavailable(e),
            KeysErr::Deadline => DiscoveryError::DeadlineExceeded,
            KeysErr::Etcd {
                code,
                message,
                cause,
                index,
            } => DiscoveryError::Etcd {
                code,
                message,
                cause,
                index,
            },
            KeysErr::InvalidJson => DiscoveryError::InvalidJson,
            KeysErr::EmptyBody => DiscoveryError::EmptyBody,
            KeysErr::BadIndex { value, reason } => DiscoveryError::BadIndexHeader { value, reason },
        }
    }
}

impl V2Discovery {
    /// etcd's `JoinCluster(lg, durl, dproxyurl, id, config)` (discovery.go:63-69): registers
    /// `member_id` with `local_value` (`name=peerURL[,name=peerURL]`, see
    /// [`super::local_value`]) under the token `discovery_url` names, and waits for the rest.
    /// `member_id` is [`super::member_id_v2`]. Errors: [`DiscoveryError::BadUrl`] only.
    pub fn join(
        discovery_url: &str,
        member_id: u64,
        local_value: &str,
    ) -> Result<Self, DiscoveryError> {
        Self::build(discovery_url, member_id, local_value, Mode::Join)
    }

    /// The same as [`V2Discovery::join`] (the name of the interface sketch).
    pub fn new(
        discovery_url: &str,
        member_id: u64,
        local_value: &str,
    ) -> Result<Self, DiscoveryError> {
        Self::join(discovery_url, member_id, local_value)
    }

    /// etcd's `GetCluster(lg, durl, dproxyurl)` (discovery.go:73-79), used by etcd 3.4's proxy
    /// fallback: the cluster's members without registering (member ID 0); a full cluster gives
    /// its first `size` members. Errors: [`DiscoveryError::BadUrl`] only.
    pub fn get_cluster(discovery_url: &str) -> Result<Self, DiscoveryError> {
        Self::build(discovery_url, 0, "", Mode::GetCluster)
    }

    /// Replaces etcd's retry limit ([`ETCD_MAX_RETRIES`]; etcd's tests lower `nRetries` the
    /// same way): after `max_retries` retries the run ends with
    /// [`DiscoveryError::TooManyRetries`].
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// A deliberate bug, for proving the simulator's `[discovery]` checker can fail (detcd-net's
    /// mutation `discovery-ignore-size`; never in production): the machine never finds the
    /// cluster full and takes every registered member, so a `size+1`-th member goes on
    /// instead of stopping with "cluster is full".
    pub fn with_size_ignored(mut self) -> Self {
        self.ignore_size = true;
        self
    }

    fn build(
        discovery_url: &str,
        member_id: u64,
        local_value: &str,
        mode: Mode,
    ) -> Result<Self, DiscoveryError> {
        let (endpoint, token) = parse_discovery_url(discovery_url)?;
        let id_hex = crate::ids::format_id(member_id);
        let self_key = path_join(&["/", &token, &id_hex]);
        Ok(V2Discovery {
            durl: discovery_url.to_string(),
            size_key: path_join(&["/", &token, "_config", "size"]),
            self_base: path_base(&self_key).to_string(),
            self_key,
            endpoint,
            token,
            local_value: local_value.to_string(),
            mode,
            retries: 0,
            max_retries: ETCD_MAX_RETRIES,
            out: VecDeque::new(),
            state: State::Start,
            ignore_size: false,
        })
    }

    /// `scheme://host[:port]` of the discovery URL: where every request goes.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The discovery URL's path: the token directory's key.
    pub fn token_path(&self) -> &str {
        &self.token
    }

    /// How many retries the run has made so far (etcd's `d.retries`).
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The next thing to do: `None` while a sent request or a sleep is outstanding, and after
    /// `Done` was returned.
    pub fn poll_step(&mut self) -> Option<Step> {
        if matches!(self.state, State::Start) {
            let purpose = match self.mode {
                Mode::Join => Purpose::BeforeRegister,
                Mode::GetCluster => Purpose::GetCluster,
            };
            self.check_cluster(purpose);
        }
        self.out.pop_front()
    }

    /// The outcome of the last [`Step::Send`]. Ignored when no request is outstanding.
    pub fn handle_response(&mut self, transport: Transport) {
        let (op, original, redirects) = match std::mem::replace(&mut self.state, State::Finished) {
            State::InFlight {
                op,
                original,
                redirects,
            } => (op, original, redirects),
            other => {
                // No request outstanding: ignored.
                self.state = other;
                return;
            }
        };
        // The client layer (client.go): redirects, 5xx, transport failures.
        let outcome: Result<HttpResponse, KeysErr> = match transport {
            Transport::Failed(e) => Err(KeysErr::Failed(e)),
            Transport::TimedOut => Err(KeysErr::Deadline),
            Transport::Response(r) if r.body.len() > MAX_BODY_BYTES => Err(KeysErr::Failed(
                format!("response body longer than {MAX_BODY_BYTES} bytes"),
            )),
            Transport::Response(r) if r.status / 100 == 3 => {
                match redirect_target(r.location.as_deref()) {
                    Ok(url) if redirects < MAX_REDIRECTS => {
                        let mut req = original.clone();
                        req.url = url;
                        self.out.push_back(Step::Send(req));
                        self.state = State::InFlight {
                            op,
                            original,
                            redirects: redirects + 1,
                        };
                        return;
                    }
                    Ok(_) => Err(KeysErr::Failed("client: too many redirects".into())),
                    Err(e) => Err(KeysErr::Failed(e)),
                }
            }
            Transport::Response(r) if r.status / 100 == 5 => {
                Err(KeysErr::Failed(server_error_text(&self.endpoint, r.status)))
            }
            Transport::Response(r) => Ok(r),
        };
        let result = outcome.and_then(|r| unmarshal(&r));
        match op {
            Op::GetSize(purpose) => self.on_size(purpose, result),
            Op::GetDir { purpose, size } => self.on_dir(purpose, size, result),
            Op::Create => self.on_create(result),
            Op::SelfWatch { empties } => self.on_self_watch(original, empties, result),
            Op::Wait { size, all, empties } => self.on_wait(original, size, all, empties, result),
        }
    }

    /// A [`Step::Sleep`] is over. Ignored when no sleep is outstanding.
    pub fn handle_slept(&mut self) {
        if let State::Sleeping(purpose) = self.state {
            self.check_cluster(purpose);
        }
    }

    // --- steps -------------------------------------------------------------------------------

    fn send(&mut self, op: Op, req: HttpRequest) {
        self.out.push_back(Step::Send(req.clone()));
        self.state = State::InFlight {
            op,
            original: req,
            redirects: 0,
        };
    }

    fn log(&mut self, log: Log) {
        self.out.push_back(Step::Log(log));
    }

    fn done(&mut self, result: Result<String, DiscoveryError>) {
        self.out.push_back(Step::Done(result));
        self.state = State::Finished;
    }

    fn url(&self, key: &str, query: &str) -> String {
        format!("{}{}?{}", self.endpoint, canonical_url_path(key), query)
    }

    /// etcd's `getAction` (keys.go): `GET <key>?quorum=false&recursive=false&sorted=false`.
    fn get(&self, key: &str) -> HttpRequest {
        HttpRequest {
            method: Method::Get,
            url: self.url(key, "quorum=false&recursive=false&sorted=false"),
            form_body: None,
            timeout_ms: Some(REQUEST_TIMEOUT_MS),
            connect_timeout_ms: DIAL_TIMEOUT_MS,
        }
    }

    /// etcd's `waitAction` (keys.go): `GET <key>?recursive=..&wait=true&waitIndex=N`, no deadline.
    fn wait(&self, key: &str, recursive: bool, wait_index: u64) -> HttpRequest {
        HttpRequest {
            method: Method::Get,
            url: self.url(
                key,
                &format!("recursive={recursive}&wait=true&waitIndex={wait_index}"),
            ),
            form_body: None,
            timeout_ms: None,
            connect_timeout_ms: DIAL_TIMEOUT_MS,
        }
    }

    /// checkCluster, first request: the size key (discovery.go:221-253).
    fn check_cluster(&mut self, purpose: Purpose) {
        let req = self.get(&self.size_key);
        self.send(Op::GetSize(purpose), req);
    }

    fn on_size(&mut self, purpose: Purpose, result: Result<KeysResponse, KeysErr>) {
        match result {
            Err(KeysErr::Failed(e)) => {
                let path = self.size_key.clone();
                self.log_cluster_error(&path, &e);
                self.check_cluster_retry(purpose);
            }
            // etcd 3.4 means to map code 100 to ErrSizeNotFound (discovery.go:228; the
            // `*client.Error` assertion never matches the `client.Error` value, so 3.4 prints the raw error); detcd
            // prints the guide's sentence for it.
            Err(KeysErr::Etcd { code: 100, .. }) => {
                let url = self.durl.clone();
                self.check_done(purpose, Check::Err(DiscoveryError::SizeNotFound { url }));
            }
            Err(KeysErr::InvalidJson) => {
                self.check_done(purpose, Check::Err(DiscoveryError::BadDiscoveryEndpoint))
            }
            Err(e) => self.check_done(purpose, Check::Err(e.into_error(false))),
            Ok(resp) => match parse_go_uint(&resp.node.value) {
                Ok(size) => {
                    // discovery.go:256: GET d.cluster (the raw path).
                    let req = self.get(&self.token);
                    self.send(Op::GetDir { purpose, size }, req);
                }
                Err(_) => self.check_done(
                    purpose,
                    Check::Err(DiscoveryError::BadSizeKey {
                        value: resp.node.value,
                    }),
                ),
            },
        }
    }

    /// checkCluster, second request: the token directory (discovery.go:255-296).
    fn on_dir(&mut self, purpose: Purpose, size: u64, result: Result<KeysResponse, KeysErr>) {
        match result {
            Err(KeysErr::Failed(e)) => {
                let path = self.token.clone();
                self.log_cluster_error(&path, &e);
                self.check_cluster_retry(purpose);
            }
            Err(e) => self.check_done(purpose, Check::Err(e.into_error(false))),
            Ok(resp) => {
                let mut nodes: Vec<Node> = resp
                    .children
                    .into_iter()
                    .filter(|n| path_base(&n.key) != "_config")
                    .collect();
                if nodes.len() > MAX_NODES {
                    let err = DiscoveryError::TooManyNodes { limit: MAX_NODES };
                    return self.check_done(purpose, Check::Err(err));
                }
                nodes.sort_by_key(|n| n.created_index);
                // find self position (discovery.go:286-294); size-1 wraps for a size of 0 as
                // Go's uint64 does, so a size of 0 is never full.
                let mut full = false;
                for (i, n) in nodes.iter().enumerate().filter(|_| !self.ignore_size) {
                    if path_base(&n.key) == self.self_base {
                        break;
                    }
                    if (i as u64) >= size.wrapping_sub(1) {
                        full = true;
                        break;
                    }
                }
                let check = if full {
                    // i >= size-1 with i < len: size <= len, so this cannot overflow.
                    nodes.truncate(usize::try_from(size).unwrap_or(usize::MAX));
                    Check::Full { nodes, size }
                } else {
                    Check::Ok {
                        nodes,
                        size,
                        index: resp.index,
                    }
                };
                self.check_done(purpose, check);
            }
        }
    }

    /// The end of a `checkCluster`: what its caller does next.
    fn check_done(&mut self, purpose: Purpose, check: Check) {
        match (purpose, check) {
            (_, Check::Err(e)) => self.done(Err(e)),
            (Purpose::GetCluster, Check::Full { nodes, size }) => {
                let r = nodes_to_cluster(&nodes, size);
                self.done(r)
            }
            (_, Check::Full { .. }) => self.done(Err(DiscoveryError::FullCluster)),
            (Purpose::BeforeRegister, Check::Ok { .. }) => self.create_self(),
            (_, Check::Ok { nodes, size, index }) => self.wait_nodes(nodes, size, index),
        }
    }

    /// checkClusterRetry (discovery.go:319-325).
    fn check_cluster_retry(&mut self, purpose: Purpose) {
        if self.retries < self.max_retries {
            self.backoff("cluster status check", purpose);
        } else {
            self.check_done(purpose, Check::Err(DiscoveryError::TooManyRetries));
        }
    }

    /// waitNodesRetry (discovery.go:327-337): back off, then checkCluster and waitNodes anew.
    fn wait_nodes_retry(&mut self) {
        if self.retries < self.max_retries {
            self.backoff("waiting for other nodes", Purpose::WaitRetry);
        } else {
            self.done(Err(DiscoveryError::TooManyRetries));
        }
    }

    /// logAndBackoffForRetry (discovery.go:298-317).
    fn backoff(&mut self, step: &str, then: Purpose) {
        self.retries = self.retries.saturating_add(1);
        let ms = backoff_ms(self.retries);
        let d = go_duration(ms);
        let log = Log {
            level: LogLevel::Info,
            text: format!(
                "{step}: error connecting to {}, retrying in {d}",
                self.endpoint
            ),
            msg: "retry connecting to discovery service".into(),
            fields: vec![
                ("url", self.endpoint.clone()),
                ("reason", step.to_string()),
                ("backoff", d),
            ],
        };
        self.out.push_back(Step::Sleep { ms, log });
        self.state = State::Sleeping(then);
    }

    /// The `ClusterError` checkCluster logs before retrying (discovery.go:233-247, 258-271).
    fn log_cluster_error(&mut self, path: &str, entry: &str) {
        let detail = format!("error #0: {entry}");
        self.log(Log {
            level: LogLevel::Warn,
            text: detail.clone(),
            msg: "failed to get from discovery server".into(),
            fields: vec![
                ("discovery-url", self.endpoint.clone()),
                ("path", path.to_string()),
                (
                    "error",
                    format!("client: etcd cluster is unavailable or misconfigured; {detail}"),
                ),
                ("err-detail", detail),
            ],
        });
    }

    /// createSelf, the PUT (discovery.go:204-213; keys.go `setAction`, one-shot).
    fn create_self(&mut self) {
        let req = HttpRequest {
            method: Method::Put,
            url: self.url(&self.self_key, "prevExist=false"),
            form_body: Some(format!("value={}", query_escape(&self.local_value))),
            timeout_ms: Some(REQUEST_TIMEOUT_MS),
            connect_timeout_ms: DIAL_TIMEOUT_MS,
        };
        self.send(Op::Create, req);
    }

    fn on_create(&mut self, result: Result<KeysResponse, KeysErr>) {
        match result {
            Err(KeysErr::Etcd { code: 105, .. }) => self.done(Err(DiscoveryError::DuplicateId)),
            Err(e) => self.done(Err(e.into_error(true))),
            Ok(resp) => {
                // "ensure self appears on the server we connected to" (discovery.go:215-218):
                // Watcher(selfKey, AfterIndex: CreatedIndex-1), uint64 arithmetic as Go's, and
                // keys.go's Watcher sets WaitIndex only when AfterIndex > 0.
                let after = resp.node.created_index.wrapping_sub(1);
                let wait_index = if after > 0 { after.wrapping_add(1) } else { 0 };
                let req = self.wait(&self.self_key, false, wait_index);
                self.send(Op::SelfWatch { empties: 0 }, req);
            }
        }
    }

    fn on_self_watch(
        &mut self,
        original: HttpRequest,
        empties: u32,
        result: Result<KeysResponse, KeysErr>,
    ) {
        match result {
            // httpWatcher.Next re-sends on an empty body (keys.go:457-462).
            Err(KeysErr::EmptyBody) if empties + 1 < MAX_EMPTY_WATCH_RESPONSES => self.send(
                Op::SelfWatch {
                    empties: empties + 1,
                },
                original,
            ),
            Err(e) => self.done(Err(e.into_error(false))),
            Ok(_) => self.check_cluster(Purpose::AfterRegister),
        }
    }

    /// waitNodes (discovery.go:339-371), up to the first wait.
    fn wait_nodes(&mut self, mut all: Vec<Node>, size: u64, index: u64) {
        if all.len() as u64 > size && !self.ignore_size {
            all.truncate(usize::try_from(size).unwrap_or(usize::MAX));
        }
        // Watcher(d.cluster, AfterIndex: index, Recursive): WaitIndex = index+1 when index > 0.
        let wait_index = if index > 0 { index.wrapping_add(1) } else { 0 };
        for n in &all {
            let base = path_base(&n.key).to_string();
            let log = if base == self.self_base {
                Log {
                    level: LogLevel::Info,
                    text: format!("found self {base} in the cluster"),
                    msg: "found self from discovery server".into(),
                    fields: vec![("discovery-url", self.endpoint.clone()), ("self", base)],
                }
            } else {
                self.found_peer_log(base)
            };
            self.log(log);
        }
        self.wait_more(all, size, wait_index);
    }

    fn found_peer_log(&self, peer: String) -> Log {
        Log {
            level: LogLevel::Info,
            text: format!("found peer {peer} in the cluster"),
            msg: "found peer from discovery server".into(),
            fields: vec![("discovery-url", self.endpoint.clone()), ("peer", peer)],
        }
    }

    /// The loop of waitNodes (discovery.go:372-411): one wait per missing member.
    fn wait_more(&mut self, all: Vec<Node>, size: u64, wait_index: u64) {
        let found = all.len() as u64;
        if found < size {
            if all.len() >= MAX_NODES {
                return self.done(Err(DiscoveryError::TooManyNodes { limit: MAX_NODES }));
            }
            let more = size - found;
            self.log(Log {
                level: LogLevel::Info,
                text: format!("found {found} peer(s), waiting for {more} more"),
                msg: "found peers from discovery server; waiting for more".into(),
                fields: vec![
                    ("discovery-url", self.endpoint.clone()),
                    ("found-peers", found.to_string()),
                    ("needed-peers", more.to_string()),
                ],
            });
            let req = self.wait(&self.token, true, wait_index);
            self.send(
                Op::Wait {
                    size,
                    all,
                    empties: 0,
                },
                req,
            );
        } else {
            self.log(Log {
                level: LogLevel::Info,
                text: format!("found {found} needed peer(s)"),
                msg: "found all needed peers from discovery server".into(),
                fields: vec![
                    ("discovery-url", self.endpoint.clone()),
                    ("found-peers", found.to_string()),
                ],
            });
            let r = nodes_to_cluster(&all, size);
            self.done(r);
        }
    }

    fn on_wait(
        &mut self,
        original: HttpRequest,
        size: u64,
        mut all: Vec<Node>,
        empties: u32,
        result: Result<KeysResponse, KeysErr>,
    ) {
        let failed = match result {
            Err(KeysErr::Failed(e)) => e,
            Err(KeysErr::EmptyBody) if empties + 1 < MAX_EMPTY_WATCH_RESPONSES => {
                return self.send(
                    Op::Wait {
                        size,
                        all,
                        empties: empties + 1,
                    },
                    original,
                );
            }
            Err(KeysErr::EmptyBody) => format!(
                "{MAX_EMPTY_WATCH_RESPONSES} empty answers in a row to a wait (client: response body is empty)"
            ),
            Err(e) => return self.done(Err(e.into_error(false))),
            Ok(resp) => {
                let peer = path_base(&resp.node.key).to_string();
                let log = self.found_peer_log(peer);
                self.log(log);
                // httpWatcher.Next: nextWait.WaitIndex = resp.Node.ModifiedIndex + 1.
                let wait_index = resp.node.modified_index.wrapping_add(1);
                all.push(resp.node);
                return self.wait_more(all, size, wait_index);
            }
        };
        // discovery.go:384-388: plog.Error(ce.Detail()), then waitNodesRetry.
        let detail = format!("error #0: {failed}");
        self.log(Log {
            level: LogLevel::Error,
            text: detail.clone(),
            msg: detail,
            fields: vec![],
        });
        self.wait_nodes_retry();
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Splits a discovery URL into etcd's endpoint (`scheme://host[:port]`, the scheme lower-cased
/// as Go's `url.Parse` does) and token (the path, kept as written).
fn parse_discovery_url(s: &str) -> Result<(String, String), DiscoveryError> {
    let bad = |reason: &'static str| DiscoveryError::BadUrl {
        url: s.to_string(),
        reason,
    };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains spaces or control characters"));
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(bad("it has no http:// or https:// scheme"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if path.contains(['?', '#']) {
        return Err(bad("it must not have a query or a fragment"));
    }
    if authority.contains('@') {
        return Err(bad("it must not contain user information"));
    }
    if !s.is_ascii() {
        return Err(bad("it contains characters that are not ASCII"));
    }
    let host_ok = if let Some(b) = authority.strip_prefix('[') {
        // [IPv6 address (with an optional %zone)][:port]
        match b.split_once(']') {
            Some((h, after)) => {
                h.split('%')
                    .next()
                    .unwrap_or("")
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()
                    && (after.is_empty() || valid_port(after.strip_prefix(':')))
            }
            None => false,
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        !host.is_empty()
            && !host.contains(['[', ']', '<', '>', '"', '\\', '^', '`', '{', '|', '}'])
            && port.is_none_or(|p| valid_port(Some(p)))
    };
    if !host_ok {
        return Err(bad("its host[:port] is not valid"));
    }
    if path.trim_matches('/').is_empty() {
        return Err(bad("it has no token path"));
    }
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(bad("its path has a malformed %-escape"));
        }
    }
    Ok((format!("{scheme}://{authority}"), path.to_string()))
}

fn valid_port(p: Option<&str>) -> bool {
    p.is_some_and(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    })
}

/// Where a 3xx answer points (client.go:636-652): an absolute http(s) URL.
fn redirect_target(location: Option<&str>) -> Result<String, String> {
    let hdr = location.unwrap_or("");
    if hdr.is_empty() {
        return Err("location header not set".into());
    }
    let lower = hdr.to_ascii_lowercase();
    if (lower.starts_with("http://") || lower.starts_with("https://"))
        && !hdr.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Ok(hdr.to_string())
    } else {
        Err(format!("location header not valid URL: {hdr}"))
    }
}

/// httpClusterClient.Do's texts for a 5xx answer (client.go:374-382).
fn server_error_text(endpoint: &str, status: u16) -> String {
    match status {
        500 | 503 => format!("client: etcd member {endpoint} has no leader"),
        _ => format!(
            "client: etcd member {endpoint} returns server error [{}]",
            go_status_text(status)
        ),
    }
}

/// Go's `http.StatusText` for 5xx codes.
fn go_status_text(status: u16) -> &'static str {
    match status {
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// Go's `strconv.ParseUint(s, 10, 64)`: ASCII digits only, no sign.
fn parse_go_uint(s: &str) -> Result<u64, &'static str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid syntax");
    }
    s.parse::<u64>().map_err(|_| "value out of range")
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(default)]
    #[allow(dead_code)]
    action: Option<String>,
    #[serde(default)]
    node: Option<RawNode>,
    #[serde(default, rename = "prevNode")]
    #[allow(dead_code)]
    prev_node: Option<RawNode>,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    dir: Option<bool>,
    #[serde(default)]
    nodes: Option<Vec<RawNode>>,
    #[serde(default, rename = "createdIndex")]
    created_index: Option<u64>,
    #[serde(default, rename = "modifiedIndex")]
    modified_index: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    ttl: Option<i64>,
}

impl RawNode {
    fn to_node(&self) -> Node {
        Node {
            key: self.key.clone().unwrap_or_default(),
            value: self.value.clone().unwrap_or_default(),
            created_index: self.created_index.unwrap_or(0),
            modified_index: self.modified_index.unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default, rename = "errorCode")]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    cause: Option<String>,
    #[serde(default)]
    index: Option<u64>,
}

/// keys.go `unmarshalHTTPResponse`: 200 and 201 are answers (an empty body is
/// `ErrEmptyBody`), anything else is an etcd error body.
fn unmarshal(r: &HttpResponse) -> Result<KeysResponse, KeysErr> {
    match r.status {
        200 | 201 => {
            if r.body.is_empty() {
                return Err(KeysErr::EmptyBody);
            }
            let raw: RawResponse =
                serde_json::from_slice(&r.body).map_err(|_| KeysErr::InvalidJson)?;
            let Some(node) = raw.node else {
                return Err(KeysErr::InvalidJson);
            };
            let index = match r.etcd_index.as_deref() {
                None | Some("") => 0,
                Some(v) => parse_go_uint(v).map_err(|reason| KeysErr::BadIndex {
                    value: v.to_string(),
                    reason,
                })?,
            };
            Ok(KeysResponse {
                children: node
                    .nodes
                    .as_deref()
                    .unwrap_or(&[])
                    .iter()
                    .map(RawNode::to_node)
                    .collect(),
                node: node.to_node(),
                index,
            })
        }
        _ => {
            // Go's json.Unmarshal of `null` into a struct succeeds and leaves it zero.
            let raw: Option<RawError> =
                serde_json::from_slice(&r.body).map_err(|_| KeysErr::InvalidJson)?;
            let raw = raw.unwrap_or(RawError {
                code: None,
                message: None,
                cause: None,
                index: None,
            });
            Err(KeysErr::Etcd {
                code: raw.code.unwrap_or(0),
                message: raw.message.unwrap_or_default(),
                cause: raw.cause.unwrap_or_default(),
                index: raw.index.unwrap_or(0),
            })
        }
    }
}

/// nodesToCluster (discovery.go:418-431): the values joined by `,` in order; each must parse
/// as an initial cluster, and the distinct names must number `size`.
fn nodes_to_cluster(nodes: &[Node], size: u64) -> Result<String, DiscoveryError> {
    let cluster = nodes
        .iter()
        .map(|n| n.value.as_str())
        .collect::<Vec<_>>()
        .join(",");
    match parse_initial_cluster(&cluster) {
        Err(e) => Err(DiscoveryError::InvalidUrl {
            reason: e.to_string(),
            cluster,
        }),
        Ok(members) if members.len() as u64 != size => Err(DiscoveryError::DuplicateName {
            duplicated: duplicated_names(nodes.iter().map(|n| n.value.as_str())),
            cluster,
            size,
        }),
        Ok(_) => Ok(cluster),
    }
}

#[cfg(test)]
#[path = "v2_tests.rs"]
mod tests;
