//! etcd's configuration model: the flags a member starts with, already parsed and validated.
//! The CLI (server crate) fills this from flags and `ETCD_*` variables; everything else reads it.

use std::fmt;

/// A member URL as etcd accepts it: `scheme://host:port`, nothing more (etcd's types.NewURLs).
/// `Display` gives the normalised string etcd hashes into member IDs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Url {
    pub scheme: Scheme,
    /// Host as written: an IPv4 address, a name, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    Http,
    Https,
    /// A unix socket named by the URL's `host:port` (etcd's `unix://`, plaintext).
    Unix,
    /// A unix socket with TLS (etcd's `unixs://`).
    Unixs,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Unix => "unix",
            Scheme::Unixs => "unixs",
        }
    }

    /// `https` and `unixs`: the listener or dial speaks TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Unixs)
    }

    /// `unix` and `unixs`: a unix socket, not TCP.
    pub fn is_unix(self) -> bool {
        matches!(self, Scheme::Unix | Scheme::Unixs)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// One `name=url` entry group of `--initial-cluster`; a name listed twice collects both URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<Url>,
}

/// Everything a member is started with. Defaults are etcd 3.4's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: String,
    pub listen_peer_urls: Vec<Url>,
    pub listen_client_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    /// Members in the order given on the command line.
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_token: String,
    pub initial_cluster_state: ClusterState,
    pub snapshot_count: u64,
    /// Milliseconds.
    pub heartbeat_interval: u64,
    /// Milliseconds.
    pub election_timeout: u64,
    pub quota_backend_bytes: i64,
    pub max_request_bytes: u32,
    pub log_level: String,
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, `--auto-tls`.
    pub client_tls: crate::tls::TlsInfo,
    /// The `--peer-*` counterparts, plus `--peer-cert-allowed-cn`; both sides' CRL files and
    /// allowed hostnames.
    pub peer_tls: crate::tls::TlsInfo,
    /// `--cipher-suites`: TLS 1.2 suites by their Go names; empty means the library's defaults.
    pub cipher_suites: Vec<String>,
    /// `--self-signed-cert-validity`, in years (auto TLS).
    pub self_signed_cert_validity: u32,
    /// `--tls-min-version`, `--tls-max-version` (etcd 3.5): for every listener and peer dial.
    pub tls_versions: crate::tls::TlsVersions,
    /// `--strict-reconfig-check` (default true): refuse membership changes that could cost
    /// the quorum.
    pub strict_reconfig_check: bool,
    /// `--enable-v2`: serve the v2 keys API (and `/new`) on the client URLs.
    pub enable_v2: bool,
    /// `--max-learners` (etcd 3.6; default 1, 3.4's fixed limit).
    pub max_learners: u32,
    /// `--force-new-cluster`: restart from the data dir as the only member of the cluster.
    pub force_new_cluster: bool,
    /// `--feature-gates=AutoPromoteLearners=true`: the leader promotes learners once in sync.
    pub auto_promote_learners: bool,
    /// `--experimental-enable-lease-checkpoint`: the leader checkpoints leases' remaining TTL
    /// every 5 minutes, so a new leader does not count them afresh.
    pub lease_checkpoint: bool,
    /// `--experimental-watch-progress-notify-interval` in milliseconds (etcd: 10 min).
    pub watch_progress_notify_interval_ms: u64,
    /// `--wal-dir`: where the raft log lives, when not in the data dir.
    pub wal_dir: Option<String>,
    /// `--logger`: `capnslog` (etcd 3.4's default: text lines) or `zap` (JSON lines).
    pub logger: Logger,
    /// `--log-outputs`: `default`, `stderr`, `stdout` or file paths (etcd's
    /// embed/config_logging.go rules: capnslog takes one, zap several but not `default`).
    pub log_outputs: Vec<String>,
    /// `--max-txn-ops`: operations allowed in one Txn (etcd: 128).
    pub max_txn_ops: u32,
    /// `--pre-vote`: raft's pre-vote phase. etcd 3.4 defaults to false, 3.5 to true; detcd
    /// takes 3.5's default (a partitioned member rejoining does not depose the leader).
    pub pre_vote: bool,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`; None: off (retention 0).
    pub auto_compaction: Option<AutoCompaction>,
    /// `--grpc-keepalive-interval` in milliseconds: the server pings an idle client this
    /// often (etcd: 2 h); 0 disables.
    pub grpc_keepalive_interval_ms: u64,
    /// `--grpc-keepalive-timeout` in milliseconds: a ping unanswered this long closes the
    /// connection (etcd: 20 s).
    pub grpc_keepalive_timeout_ms: u64,
    /// `--max-concurrent-streams`: HTTP/2 streams per client connection (etcd: 2^32-1).
    pub max_concurrent_streams: u32,
    /// `--experimental-snapshot-catchup-entries`: raft entries kept behind a snapshot so a
    /// slightly slow follower catches up from the log (etcd: 5000).
    pub snapshot_catchup_entries: u64,
    /// `--discovery-srv`, `--discovery-srv-name` and detcd's `--discovery-srv-resolver`.
    pub srv: SrvConfig,
    /// `--discovery`, `--discovery-fallback`, `--discovery-proxy` and etcd 3.6's v3 discovery
    /// flags (`--discovery-token`, `--discovery-endpoints`, ...).
    pub discovery: DiscoveryConfig,
    /// `--listen-metrics-urls`: extra listeners serving only `/metrics` and the health
    /// endpoints (http, or https with the client TLS configuration), as etcd's serveMetrics.
    pub listen_metrics_urls: Vec<Url>,
    /// `--metrics extensive` (etcd's other value is the default `basic`; etcd 3.4 accepts any
    /// other word as basic): adds the gRPC handling-time histograms.
    pub metrics_extensive: bool,
}

/// `--logger`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logger {
    /// Text lines (etcd 3.4's default, `capnslog`).
    Text,
    /// JSON lines with zap's keys: `level`, `ts`, `caller`, `msg` (etcd 3.5's default).
    Zap,
}

/// etcd's auto compaction (etcdserver/api/v3compactor): `Periodic` keeps the revisions of
/// the last `retention_ms`, `Revision` keeps the last `retention` revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Periodic { retention_ms: u64 },
    Revision { retention: u64 },
}

/// etcd discovery flags (see `discovery`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `--discovery`: the discovery URL (its path is the token's directory); empty: not used.
    pub url: String,
    /// `--discovery-fallback proxy` (etcd 3.4's default): a member that finds the cluster
    /// full runs as a proxy to it instead of exiting.
    pub fallback_proxy: bool,
    /// `--discovery-proxy`: an HTTP proxy for the discovery requests; empty: none.
    pub proxy: String,
    /// etcd 3.6's v3 discovery (`--discovery-token`, `--discovery-endpoints`, ...).
    pub v3: V3DiscoveryConfig,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            url: String::new(),
            fallback_proxy: true,
            proxy: String::new(),
            v3: V3DiscoveryConfig::default(),
        }
    }
}

/// etcd 3.6's v3 discovery flags (embed/config.go `DiscoveryCfg`, a clientv3 `ConfigSpec`
/// and the token): the member registers under `token` in the etcd cluster at `endpoints`
/// through the v3 API (see `discovery::v3`). Defaults are etcd 3.6's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V3DiscoveryConfig {
    /// `--discovery-token`: the token of the cluster being bootstrapped (also its
    /// `--initial-cluster-token`, so it seeds the member and cluster IDs).
    pub token: String,
    /// `--discovery-endpoints`: the discovery service's gRPC endpoints (`host:port`, or a URL
    /// with `http`/`https`), sorted with duplicates dropped as etcd's flag type keeps them;
    /// empty: v3 discovery is not used.
    pub endpoints: Vec<String>,
    /// `--discovery-dial-timeout` (2 s).
    pub dial_timeout_ms: u64,
    /// `--discovery-request-timeout` (5 s): the deadline of each request.
    pub request_timeout_ms: u64,
    /// `--discovery-keepalive-time` (2 s): HTTP/2 pings this often (0: none).
    pub keepalive_time_ms: u64,
    /// `--discovery-keepalive-timeout` (6 s): a ping unanswered this long drops the connection.
    pub keepalive_timeout_ms: u64,
    /// `--discovery-insecure-transport` (true): endpoints without a scheme are dialed in
    /// plaintext unless a certificate flag or `--discovery-insecure-skip-tls-verify` is set.
    pub insecure_transport: bool,
    /// `--discovery-insecure-skip-tls-verify` (false).
    pub insecure_skip_tls_verify: bool,
    /// `--discovery-cert`: the client certificate presented to the discovery service.
    pub cert_file: String,
    /// `--discovery-key`: its key.
    pub key_file: String,
    /// `--discovery-cacert`: the CA bundle that verifies the discovery service (empty: the
    /// system's CA certificates).
    pub cacert_file: String,
    /// `--discovery-user` (`username[:password]`).
    pub user: String,
    /// `--discovery-password`.
    pub password: String,
}

impl Default for V3DiscoveryConfig {
    fn default() -> Self {
        V3DiscoveryConfig {
            token: String::new(),
            endpoints: Vec::new(),
            dial_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
            keepalive_time_ms: 2_000,
            keepalive_timeout_ms: 6_000,
            insecure_transport: true,
            insecure_skip_tls_verify: false,
            cert_file: String::new(),
            key_file: String::new(),
            cacert_file: String::new(),
            user: String::new(),
            password: String::new(),
        }
    }
}

impl V3DiscoveryConfig {
    /// Whether v3 discovery bootstraps this member (etcd's `len(DiscoveryCfg.Endpoints) > 0`).
    pub fn is_set(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

/// DNS SRV discovery flags (see `srv.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SrvConfig {
    /// `--discovery-srv`: the domain whose SRV records list the cluster; empty: not used.
    pub domain: String,
    /// `--discovery-srv-name`: suffix of the SRV service names (`_etcd-server-ssl-<name>`).
    pub name: String,
    /// `--discovery-srv-resolver` (detcd's own): the DNS server `ip:port` every name of the
    /// member is resolved through (SRV records, advertised and peer host names); empty: the
    /// system resolver configuration.
    pub resolver: String,
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Why a URL was refused. Messages follow etcd's `types.NewURLs` where etcd has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("no valid URLs given")]
    Empty,
    #[error("URL scheme must be http, https, unix, or unixs: {0}")]
    Scheme(String),
    #[error("URL address does not have the form \"host:port\": {0}")]
    HostPort(String),
    #[error("URL must not contain a path: {0}")]
    Path(String),
    #[error("URL must not contain a query or a fragment: {0}")]
    QueryOrFragment(String),
    #[error("URL must not contain user information: {0}")]
    UserInfo(String),
    #[error("URL port must be a number from 0 to 65535: {0}")]
    Port(String),
    #[error("URL host is not valid: {0}")]
    Host(String),
}

impl Url {
    /// Parses one URL by etcd's `types.NewURLs` rules: surrounding whitespace is trimmed, the
    /// scheme (any case) must be `http`, `https`, `unix` or `unixs`, the authority must be
    /// `host:port` with a numeric port (IPv6 hosts in brackets), and nothing may follow it (no
    /// path, not even `/`). A unix URL names its socket file by `host:port`, relative to the
    /// working directory, as etcd's `unix://etcd.unix:1` names the file `etcd.unix:1`.
    ///
    /// Like etcd, an empty host (`http://:2380`) parses; `Config::validate` refuses it where it
    /// matters. Unlike etcd, user info, queries and fragments are refused rather than carried
    /// along (etcd would hash them into member IDs).
    pub fn parse(s: &str) -> Result<Url, UrlError> {
        let input = s.trim();
        let err_str = || input.to_string();
        let Some((scheme, rest)) = input.split_once("://") else {
            // Go's url.Parse finds `unix:/tmp/sock`'s scheme but no host in it.
            let known = input.split_once(':').is_some_and(|(s, _)| {
                ["http", "https", "unix", "unixs"].contains(&s.to_ascii_lowercase().as_str())
            });
            return Err(if known {
                UrlError::HostPort(err_str())
            } else {
                UrlError::Scheme(err_str())
            });
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "unix" => Scheme::Unix,
            "unixs" => Scheme::Unixs,
            _ => return Err(UrlError::Scheme(err_str())),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if tail.starts_with('/') {
            return Err(UrlError::Path(err_str()));
        }
        if !tail.is_empty() {
            return Err(UrlError::QueryOrFragment(err_str()));
        }
        if authority.contains('@') {
            return Err(UrlError::UserInfo(err_str()));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err(UrlError::HostPort(err_str()));
            };
            let Some(port) = after.strip_prefix(':') else {
                return Err(UrlError::HostPort(err_str()));
            };
            // Brackets are for IPv6 only (a zone such as `%25eth0` is allowed after the address).
            let addr = host.split('%').next().unwrap_or("");
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(UrlError::Host(err_str()));
            }
            (host, port)
        } else {
            let Some((host, port)) = authority.rsplit_once(':') else {
                return Err(UrlError::HostPort(err_str()));
            };
            if host.contains(':') {
                // An IPv6 address without brackets: Go's SplitHostPort says "too many colons".
                return Err(UrlError::HostPort(err_str()));
            }
            (host, port)
        };
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "[]<>\"\\^`{|}".contains(c))
        {
            return Err(UrlError::Host(err_str()));
        }
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UrlError::Port(err_str()));
        }
        let port: u16 = port.parse().map_err(|_| UrlError::Port(err_str()))?;
        Ok(Url {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// The host as an IP address, if it is written as one (never for a unix socket).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        if self.scheme.is_unix() {
            return None;
        }
        self.host.parse().ok()
    }

    /// The socket file of a `unix://` or `unixs://` URL: its `host:port`, as etcd's
    /// `transport.NewUnixListener(u.Host)` takes it (`None` for TCP URLs).
    pub fn unix_path(&self) -> Option<String> {
        self.scheme
            .is_unix()
            .then(|| format!("{}:{}", self.host, self.port))
    }
}

/// Parses a comma-separated URL list (`--listen-peer-urls` and friends) as etcd's `NewURLs`:
/// every element must parse, an empty string is an error, and the result is sorted by its
/// string form as etcd sorts it (duplicates are kept).
pub fn parse_urls(s: &str) -> Result<Vec<Url>, UrlError> {
    if s.is_empty() {
        return Err(UrlError::Empty);
    }
    let mut urls = s
        .split(',')
        .map(Url::parse)
        .collect::<Result<Vec<_>, _>>()?;
    sort_urls(&mut urls);
    Ok(urls)
}

/// Sorts URLs by their string form, as etcd's `types.URLs.Sort` does.
pub fn sort_urls(urls: &mut [Url]) {
    urls.sort_by_cached_key(|u| u.to_string());
}

/// Formats URLs as etcd does: their strings joined by `,`.
pub fn format_urls(urls: &[Url]) -> String {
    urls.iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Why `--initial-cluster` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InitialClusterError {
    /// An entry with no URL (`infra0` or `infra0=`); etcd's wording.
    #[error("empty URL given for {0:?}")]
    EmptyUrl(String),
    #[error("invalid entry {0:?}: the member name is empty")]
    EmptyName(String),
    #[error("invalid entry {entry:?}: {source}")]
    Url {
        entry: String,
        #[source]
        source: UrlError,
    },
}

/// Parses `--initial-cluster` (`name=url,name=url`). A name listed more than once is one member
/// with all of its URLs (etcd-facts §3); members keep the order of their first appearance and
/// each member's URLs are sorted like `parse_urls`. Empty entries (`a=u,,b=v` or a trailing `,`)
/// are skipped and an empty string gives no members, as etcd's `NewURLsMap` does.
/// Unlike etcd, names are taken literally (no `%XX` / `+` decoding).
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, InitialClusterError> {
    let mut members: Vec<InitialMember> = Vec::new();
    for entry in s.split(',').filter(|e| !e.is_empty()) {
        let (name, url) = entry.split_once('=').unwrap_or((entry, ""));
        if url.is_empty() {
            return Err(InitialClusterError::EmptyUrl(name.to_string()));
        }
        if name.is_empty() {
            return Err(InitialClusterError::EmptyName(entry.to_string()));
        }
        let url = Url::parse(url).map_err(|source| InitialClusterError::Url {
            entry: entry.to_string(),
            source,
        })?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url],
            }),
        }
    }
    for m in &mut members {
        sort_urls(&mut m.peer_urls);
    }
    Ok(members)
}

/// Formats an initial cluster as etcd's `URLsMap.String()`: every `name=url` pair, sorted, joined by `,`.
pub fn format_initial_cluster(members: &[InitialMember]) -> String {
    let mut pairs: Vec<String> = members
        .iter()
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={}", m.name, u)))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// The default `--initial-cluster`: `<name>=<url>` for each advertised peer URL.
pub fn initial_cluster_from_name(name: &str, advertise_peer_urls: &[Url]) -> Vec<InitialMember> {
    if advertise_peer_urls.is_empty() {
        return Vec::new();
    }
    vec![InitialMember {
        name: name.to_string(),
        peer_urls: advertise_peer_urls.to_vec(),
    }]
}

// ---------------------------------------------------------------------------------------------
// Defaults and validation
// ---------------------------------------------------------------------------------------------

pub const DEFAULT_NAME: &str = "default";
pub const DEFAULT_LISTEN_PEER_URL: &str = "http://localhost:2380";
pub const DEFAULT_LISTEN_CLIENT_URL: &str = "http://localhost:2379";
pub const DEFAULT_INITIAL_CLUSTER_TOKEN: &str = "etcd-cluster";
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 100;
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1000;
/// `--max-request-bytes` default, 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 1_572_864;
/// What `--quota-backend-bytes 0` means: etcd's default backend quota, 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// etcd's `maxElectionMs`.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;
pub const LOG_LEVELS: [&str; 6] = ["debug", "info", "warn", "error", "panic", "fatal"];

/// etcd's default data dir for a member name: `<name>.etcd`.
pub fn default_data_dir(name: &str) -> String {
    format!("{name}.etcd")
}

impl Default for Config {
    /// etcd 3.4's defaults. `data_dir` and `initial_cluster` derive from the name and the
    /// advertised peer URLs: whoever changes those recomputes them (the CLI does).
    fn default() -> Self {
        let peer = Url::parse(DEFAULT_LISTEN_PEER_URL).expect("default peer URL");
        let client = Url::parse(DEFAULT_LISTEN_CLIENT_URL).expect("default client URL");
        Config {
            name: DEFAULT_NAME.to_string(),
            data_dir: default_data_dir(DEFAULT_NAME),
            listen_peer_urls: vec![peer.clone()],
            listen_client_urls: vec![client.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            advertise_client_urls: vec![client],
            initial_cluster: initial_cluster_from_name(DEFAULT_NAME, &[peer]),
            initial_cluster_token: DEFAULT_INITIAL_CLUSTER_TOKEN.to_string(),
            initial_cluster_state: ClusterState::New,
            snapshot_count: DEFAULT_SNAPSHOT_COUNT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL_MS,
            election_timeout: DEFAULT_ELECTION_TIMEOUT_MS,
            quota_backend_bytes: 0,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            log_level: "info".to_string(),
            client_tls: Default::default(),
            peer_tls: Default::default(),
            cipher_suites: Vec::new(),
            self_signed_cert_validity: 1,
            tls_versions: Default::default(),
            strict_reconfig_check: true,
            enable_v2: false,
            max_learners: 1,
            force_new_cluster: false,
            auto_promote_learners: false,
            lease_checkpoint: false,
            watch_progress_notify_interval_ms: 10 * 60 * 1000,
            wal_dir: None,
            logger: Logger::Text,
            log_outputs: vec!["default".to_string()],
            max_txn_ops: 128,
            pre_vote: true,
            auto_compaction: None,
            grpc_keepalive_interval_ms: 2 * 60 * 60 * 1000,
            grpc_keepalive_timeout_ms: 20 * 1000,
            max_concurrent_streams: u32::MAX,
            snapshot_catchup_entries: 5000,
            srv: SrvConfig::default(),
            discovery: DiscoveryConfig::default(),
            listen_metrics_urls: Vec::new(),
            metrics_extensive: false,
        }
    }
}

/// A start-up check of etcd's `embed.Config.Validate` that failed; etcd's wording.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A listen URL whose host is neither an IP address nor `localhost`.
    #[error("expected IP in URL for binding ({0})")]
    BindNotIp(String),
    #[error("--initial-advertise-peer-urls {urls:?} must be \"host:port\" (unexpected empty host ({url}))")]
    AdvertisePeerEmptyHost { urls: String, url: String },
    #[error(
        "--advertise-client-urls {urls:?} must be \"host:port\" (unexpected empty host ({url}))"
    )]
    AdvertiseClientEmptyHost { urls: String, url: String },
    #[error("--heartbeat-interval must be >0 (set to {0}ms)")]
    HeartbeatZero(u64),
    #[error("--election-timeout must be >0 (set to {0}ms)")]
    ElectionZero(u64),
    #[error("--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat}ms]")]
    ElectionTooShort { election: u64, heartbeat: u64 },
    #[error("--election-timeout[{0}ms] is too long, and should be set less than {MAX_ELECTION_TIMEOUT_MS}ms")]
    ElectionTooLong(u64),
    #[error("invalid log level {0:?} (only supports debug, info, warn, error, panic, or fatal)")]
    LogLevel(String),
}

impl Config {
    /// etcd's pure start-up checks, in etcd's order. Listen URLs must name an IP address, or
    /// `localhost`, which etcd 3.4 special-cases (and which the default config uses);
    /// advertised URLs may be names but need a host. The `--listen-client-urls` without
    /// `--advertise-client-urls` rule depends on which flags were set explicitly: the CLI checks it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_bind_urls(&self.listen_peer_urls)?;
        check_bind_urls(&self.listen_client_urls)?;
        check_bind_urls(&self.listen_metrics_urls)?;
        if let Some(u) = self
            .initial_advertise_peer_urls
            .iter()
            .find(|u| u.host.is_empty())
        {
            return Err(ConfigError::AdvertisePeerEmptyHost {
                urls: format_urls(&self.initial_advertise_peer_urls),
                url: u.to_string(),
            });
        }
        if let Some(u) = self
            .advertise_client_urls
            .iter()
            .find(|u| u.host.is_empty())
        {
            return Err(ConfigError::AdvertiseClientEmptyHost {
                urls: format_urls(&self.advertise_client_urls),
                url: u.to_string(),
            });
        }
        validate_timeouts(self.heartbeat_interval, self.election_timeout)?;
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(ConfigError::LogLevel(self.log_level.clone()));
        }
        Ok(())
    }

    /// The backend quota in bytes, with 0 (or a negative value) meaning etcd's default 2 GiB.
    pub fn effective_quota_backend_bytes(&self) -> i64 {
        if self.quota_backend_bytes <= 0 {
            DEFAULT_QUOTA_BACKEND_BYTES
        } else {
            self.quota_backend_bytes
        }
    }

    /// Election timeout in heartbeat ticks, as etcd computes it (`ElectionMs / TickMs`).
    pub fn election_ticks(&self) -> u64 {
        self.election_timeout / self.heartbeat_interval.max(1)
    }
}

/// etcd's `checkBindURLs`: a listen URL must hold an IP address or `localhost` (a unix
/// socket URL names a file and is not checked).
pub fn check_bind_urls(urls: &[Url]) -> Result<(), ConfigError> {
    for u in urls {
        if !u.scheme.is_unix() && u.host != "localhost" && u.ip().is_none() {
            return Err(ConfigError::BindNotIp(u.to_string()));
        }
    }
    Ok(())
}

/// etcd's heartbeat / election timeout rules (milliseconds).
pub fn validate_timeouts(heartbeat_ms: u64, election_ms: u64) -> Result<(), ConfigError> {
    if heartbeat_ms == 0 {
        return Err(ConfigError::HeartbeatZero(heartbeat_ms));
    }
    if election_ms == 0 {
        return Err(ConfigError::ElectionZero(election_ms));
    }
    if heartbeat_ms.saturating_mul(5) > election_ms {
        return Err(ConfigError::ElectionTooShort {
            election: election_ms,
            heartbeat: heartbeat_ms,
        });
    }
    if election_ms > MAX_ELECTION_TIMEOUT_MS {
        return Err(ConfigError::ElectionTooLong(election_ms));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn url_parse_accepts() {
        let cases: &[(&str, Scheme, &str, u16, &str)] = &[
            (
                "http://10.0.1.10:2380",
                Scheme::Http,
                "10.0.1.10",
                2380,
                "http://10.0.1.10:2380",
            ),
            (
                "https://infra0.example.com:2379",
                Scheme::Https,
                "infra0.example.com",
                2379,
                "https://infra0.example.com:2379",
            ),
            (
                "http://localhost:2380",
                Scheme::Http,
                "localhost",
                2380,
                "http://localhost:2380",
            ),
            (
                "  http://127.0.0.1:2379 ",
                Scheme::Http,
                "127.0.0.1",
                2379,
                "http://127.0.0.1:2379",
            ),
            (
                "HTTP://127.0.0.1:1",
                Scheme::Http,
                "127.0.0.1",
                1,
                "http://127.0.0.1:1",
            ),
            (
                "http://[::1]:2380",
                Scheme::Http,
                "::1",
                2380,
                "http://[::1]:2380",
            ),
            (
                "https://[fe80::1%25eth0]:2380",
                Scheme::Https,
                "fe80::1%25eth0",
                2380,
                "https://[fe80::1%25eth0]:2380",
            ),
            (
                "unix://etcd.unix:1",
                Scheme::Unix,
                "etcd.unix",
                1,
                "unix://etcd.unix:1",
            ),
            (
                "UNIXS://localhost:12345",
                Scheme::Unixs,
                "localhost",
                12345,
                "unixs://localhost:12345",
            ),
            (
                "http://0.0.0.0:0",
                Scheme::Http,
                "0.0.0.0",
                0,
                "http://0.0.0.0:0",
            ),
            ("http://a:65535", Scheme::Http, "a", 65535, "http://a:65535"),
            // etcd's NewURLs accepts an empty host; validate() refuses it for listen/advertise.
            ("http://:2380", Scheme::Http, "", 2380, "http://:2380"),
        ];
        for &(input, scheme, host, port, display) in cases {
            let url = Url::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                url,
                Url {
                    scheme,
                    host: host.to_string(),
                    port
                },
                "{input}"
            );
            assert_eq!(url.to_string(), display, "{input}");
        }
    }

    #[test]
    fn url_parse_rejects() {
        let cases: &[(&str, &str)] = &[
            ("", "URL scheme must be http, https, unix, or unixs: "),
            (
                "10.0.1.10:2380",
                "URL scheme must be http, https, unix, or unixs: 10.0.1.10:2380",
            ),
            (
                "ftp://a:1",
                "URL scheme must be http, https, unix, or unixs: ftp://a:1",
            ),
            (
                "unix:/tmp/sock",
                "URL address does not have the form \"host:port\": unix:/tmp/sock",
            ),
            (
                "unix://etcd.unix",
                "URL address does not have the form \"host:port\": unix://etcd.unix",
            ),
            (
                "http://10.0.1.10",
                "URL address does not have the form \"host:port\": http://10.0.1.10",
            ),
            (
                "http://",
                "URL address does not have the form \"host:port\": http://",
            ),
            (
                "http://::1:2380",
                "URL address does not have the form \"host:port\": http://::1:2380",
            ),
            (
                "http://[::1]",
                "URL address does not have the form \"host:port\": http://[::1]",
            ),
            (
                "http://[::1:2380",
                "URL address does not have the form \"host:port\": http://[::1:2380",
            ),
            (
                "http://10.0.1.10:2380/",
                "URL must not contain a path: http://10.0.1.10:2380/",
            ),
            (
                "http://10.0.1.10:2380/v2/keys",
                "URL must not contain a path: http://10.0.1.10:2380/v2/keys",
            ),
            (
                "http://10.0.1.10/x",
                "URL must not contain a path: http://10.0.1.10/x",
            ),
            (
                "http://a:1?x=y",
                "URL must not contain a query or a fragment: http://a:1?x=y",
            ),
            (
                "http://a:1#f",
                "URL must not contain a query or a fragment: http://a:1#f",
            ),
            (
                "http://u:p@a:1",
                "URL must not contain user information: http://u:p@a:1",
            ),
            (
                "http://a:abc",
                "URL port must be a number from 0 to 65535: http://a:abc",
            ),
            (
                "http://a:",
                "URL port must be a number from 0 to 65535: http://a:",
            ),
            (
                "http://a:65536",
                "URL port must be a number from 0 to 65535: http://a:65536",
            ),
            (
                "http://a:-1",
                "URL port must be a number from 0 to 65535: http://a:-1",
            ),
            (
                "http://[1.2.3.4]:80",
                "URL host is not valid: http://[1.2.3.4]:80",
            ),
            ("http://a b:1", "URL host is not valid: http://a b:1"),
        ];
        for &(input, msg) in cases {
            let err = Url::parse(input).expect_err(input);
            assert_eq!(err.to_string(), msg, "{input}");
        }
    }

    #[test]
    fn parse_urls_lists() {
        assert_eq!(parse_urls("").unwrap_err(), UrlError::Empty);
        assert_eq!(
            parse_urls("").unwrap_err().to_string(),
            "no valid URLs given"
        );
        assert_eq!(parse_urls("http://a:1").unwrap(), vec![u("http://a:1")]);
        // Sorted by string, like etcd's types.URLs.Sort (so port 2380 sorts before 80).
        assert_eq!(
            parse_urls("http://10.0.1.10:2379,http://127.0.0.1:2379").unwrap(),
            vec![u("http://10.0.1.10:2379"), u("http://127.0.0.1:2379")]
        );
        assert_eq!(
            parse_urls("http://b:80,http://b:2380,https://a:1").unwrap(),
            vec![u("http://b:2380"), u("http://b:80"), u("https://a:1")]
        );
        assert_eq!(
            parse_urls("http://a:1, http://b:2").unwrap(),
            vec![u("http://a:1"), u("http://b:2")]
        );
        // Duplicates are kept (bootstrap reports them).
        assert_eq!(parse_urls("http://a:1,http://a:1").unwrap().len(), 2);
        assert_eq!(
            parse_urls("http://a:1,").unwrap_err().to_string(),
            "URL scheme must be http, https, unix, or unixs: "
        );
        assert_eq!(
            parse_urls("http://a:1,http://b").unwrap_err().to_string(),
            "URL address does not have the form \"host:port\": http://b"
        );
    }

    #[test]
    fn initial_cluster_parsing() {
        let guide = "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380";
        assert_eq!(
            parse_initial_cluster(guide).unwrap(),
            vec![
                InitialMember {
                    name: "infra0".into(),
                    peer_urls: vec![u("http://10.0.1.10:2380")]
                },
                InitialMember {
                    name: "infra1".into(),
                    peer_urls: vec![u("http://10.0.1.11:2380")]
                },
                InitialMember {
                    name: "infra2".into(),
                    peer_urls: vec![u("http://10.0.1.12:2380")]
                },
            ]
        );
        // A name twice: one member with both URLs (sorted), in first-appearance order.
        assert_eq!(
            parse_initial_cluster(
                "b=http://10.0.0.2:2380,a=http://10.0.0.9:2380,b=http://10.0.0.1:2380"
            )
            .unwrap(),
            vec![
                InitialMember {
                    name: "b".into(),
                    peer_urls: vec![u("http://10.0.0.1:2380"), u("http://10.0.0.2:2380")]
                },
                InitialMember {
                    name: "a".into(),
                    peer_urls: vec![u("http://10.0.0.9:2380")]
                },
            ]
        );
        assert_eq!(parse_initial_cluster("").unwrap(), vec![]);
        assert_eq!(parse_initial_cluster("a=http://a:1,").unwrap().len(), 1);
        assert_eq!(
            parse_initial_cluster("a=http://a:1,,b=http://b:1")
                .unwrap()
                .len(),
            2
        );

        let errors: &[(&str, &str)] = &[
            ("infra0", "empty URL given for \"infra0\""),
            ("infra0=", "empty URL given for \"infra0\""),
            ("a=http://a:1,infra1", "empty URL given for \"infra1\""),
            ("=http://a:1", "invalid entry \"=http://a:1\": the member name is empty"),
            (
                "infra0=http://10.0.1.10",
                "invalid entry \"infra0=http://10.0.1.10\": URL address does not have the form \"host:port\": http://10.0.1.10",
            ),
            (
                "infra0=10.0.1.10:2380",
                "invalid entry \"infra0=10.0.1.10:2380\": URL scheme must be http, https, unix, or unixs: 10.0.1.10:2380",
            ),
            (
                "a=http://a:1/p",
                "invalid entry \"a=http://a:1/p\": URL must not contain a path: http://a:1/p",
            ),
        ];
        for &(input, msg) in errors {
            assert_eq!(
                parse_initial_cluster(input).unwrap_err().to_string(),
                msg,
                "{input}"
            );
        }
    }

    #[test]
    fn initial_cluster_formatting() {
        let members = parse_initial_cluster(
            "infra1=http://10.0.1.11:2380,infra0=http://10.0.1.10:2380,infra0=http://10.0.1.9:2380",
        )
        .unwrap();
        assert_eq!(
            format_initial_cluster(&members),
            "infra0=http://10.0.1.10:2380,infra0=http://10.0.1.9:2380,infra1=http://10.0.1.11:2380"
        );
        assert_eq!(
            initial_cluster_from_name("n", &[u("http://a:1"), u("http://b:2")]),
            vec![InitialMember {
                name: "n".into(),
                peer_urls: vec![u("http://a:1"), u("http://b:2")]
            }]
        );
        assert_eq!(initial_cluster_from_name("n", &[]), vec![]);
    }

    #[test]
    fn defaults_are_etcd_34s() {
        let c = Config::default();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, "default.etcd");
        assert_eq!(c.listen_peer_urls, vec![u("http://localhost:2380")]);
        assert_eq!(
            c.initial_advertise_peer_urls,
            vec![u("http://localhost:2380")]
        );
        assert_eq!(c.listen_client_urls, vec![u("http://localhost:2379")]);
        assert_eq!(c.advertise_client_urls, vec![u("http://localhost:2379")]);
        assert_eq!(
            format_initial_cluster(&c.initial_cluster),
            "default=http://localhost:2380"
        );
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(c.initial_cluster_state, ClusterState::New);
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.heartbeat_interval, 100);
        assert_eq!(c.election_timeout, 1000);
        assert_eq!(c.quota_backend_bytes, 0);
        assert_eq!(c.effective_quota_backend_bytes(), 2 * 1024 * 1024 * 1024);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.log_level, "info");
        assert_eq!(c.election_ticks(), 10);
        assert_eq!(default_data_dir("infra0"), "infra0.etcd");
        c.validate().expect("the default config is valid");
    }

    #[test]
    fn validation() {
        type Edit = fn(&mut Config);
        let cases: &[(Edit, Option<&str>)] = &[
            (|_| {}, None),
            (|c| c.listen_peer_urls = vec![u("http://10.0.1.10:2380")], None),
            (|c| c.listen_client_urls = vec![u("http://0.0.0.0:2379"), u("http://[::]:2379")], None),
            (|c| c.listen_peer_urls = vec![u("http://infra0.example.com:2380")],
                Some("expected IP in URL for binding (http://infra0.example.com:2380)")),
            (|c| c.listen_client_urls = vec![u("http://127.0.0.1:2379"), u("https://example.com:2379")],
                Some("expected IP in URL for binding (https://example.com:2379)")),
            (|c| c.listen_client_urls = vec![u("http://:2379")], Some("expected IP in URL for binding (http://:2379)")),
            (|c| c.listen_peer_urls = vec![u("unix://etcd.unix:1")], None),
            // Advertised URLs may be names.
            (|c| c.initial_advertise_peer_urls = vec![u("http://infra0.example.com:2380")], None),
            (|c| c.advertise_client_urls = vec![u("https://infra0.example.com:2379")], None),
            (|c| c.initial_advertise_peer_urls = vec![u("http://:2380"), u("http://a:1")],
                Some("--initial-advertise-peer-urls \"http://:2380,http://a:1\" must be \"host:port\" (unexpected empty host (http://:2380))")),
            (|c| c.advertise_client_urls = vec![u("http://:2379")],
                Some("--advertise-client-urls \"http://:2379\" must be \"host:port\" (unexpected empty host (http://:2379))")),
            (|c| c.heartbeat_interval = 0, Some("--heartbeat-interval must be >0 (set to 0ms)")),
            (|c| c.election_timeout = 0, Some("--election-timeout must be >0 (set to 0ms)")),
            (|c| c.election_timeout = 499,
                Some("--election-timeout[499ms] should be at least as 5 times as --heartbeat-interval[100ms]")),
            (|c| c.election_timeout = 500, None),
            (|c| { c.heartbeat_interval = 300; c.election_timeout = 1000 },
                Some("--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]")),
            (|c| c.election_timeout = 50_000, None),
            (|c| c.election_timeout = 50_001,
                Some("--election-timeout[50001ms] is too long, and should be set less than 50000ms")),
            (|c| c.log_level = "debug".into(), None),
            (|c| c.log_level = "fatal".into(), None),
            (|c| c.log_level = "verbose".into(),
                Some("invalid log level \"verbose\" (only supports debug, info, warn, error, panic, or fatal)")),
        ];
        for (i, (edit, want)) in cases.iter().enumerate() {
            let mut c = Config::default();
            edit(&mut c);
            let got = c.validate().err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), *want, "case {i}");
        }
    }
}
