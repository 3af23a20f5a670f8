//! Starting a member: open the data dir, take the bootstrap decision, mount the raft driver,
//! the peer transport and the client services on the configured URLs. The `detcd` binary and
//! the simulator both call `run_member`.

use crate::api::Api;
use crate::node::{Node, NodeError, NodeParams, NodeStorage};
use crate::proto::detcdpb::peer_server::PeerServer;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::snapshot_files::SnapshotFiles;
#[cfg(not(madsim))]
use crate::transport::MAX_PEER_MESSAGE_BYTES;
use crate::transport::{fetch_remote_clusters, PeerDialTls, PeerService, Transport};
use detcd_core::bootstrap::{self, Bootstrap, BootstrapError, BootstrapMember, DataDirState};
use detcd_core::config::Config;
use detcd_core::ids::format_id;
use detcd_core::membership::Membership;
use detcd_core::proto::detcdpb::MemberAttributes;
use detcd_core::raft_log::{LogError, RaftLog};
use detcd_core::tables::{meta_keys, META};
use detcd_core::wal::LogFile;
use redb::ReadableDatabase;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Why a member could not start or had to stop. Each is printed and the process exits 1.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("{0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("cannot access data dir {path}: {err}")]
    DataDir { path: String, err: String },
    #[error("{0}")]
    Storage(#[from] LogError),
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("listen tcp {addr}: {err}")]
    Listen { addr: String, err: String },
    #[error("cannot resolve listen URL host {0}")]
    Resolve(String),
    #[error("{0}")]
    Tls(String),
    /// DNS SRV discovery found no usable cluster (etcd's messages, after etcdmain's prefix).
    #[error("error setting up initial cluster: {0}")]
    Srv(#[from] detcd_core::srv::SrvError),
    /// The DNS server did not answer, after retries.
    #[error("error setting up initial cluster: {0}")]
    DnsTimeout(#[from] crate::dns::DnsTimeout),
    #[error("{0}")]
    DnsSetup(#[from] crate::dns::DnsSetupError),
    /// etcd discovery failed (etcd's `failed to join discovery cluster (..)`; a missing size
    /// prints the guide's sentence alone). A full cluster may fall back to a proxy
    /// ([`MemberError::is_full_discovery_cluster`]).
    #[error("{}", discovery_failure(.0))]
    Discovery(detcd_core::discovery::DiscoveryError),
    /// etcd 3.6's v3 discovery (`--discovery-endpoints`) failed: etcd's `failed to join
    /// discovery cluster (..)`. A full cluster ends the start too (etcd 3.6 has no proxy
    /// fallback).
    #[error("failed to join discovery cluster ({0})")]
    DiscoveryV3(crate::discovery::V3Error),
    /// SIGTERM or SIGINT stopped the member, after etcd's leadership transfer (the
    /// signal's number: the binary ends by it again, as etcd's osutil.HandleInterrupts does).
    #[error("received signal {0}")]
    Signaled(i32),
}

fn discovery_failure(e: &detcd_core::discovery::DiscoveryError) -> String {
    use detcd_core::discovery::DiscoveryError as E;
    match e {
        E::SizeNotFound { .. } | E::BadUrl { .. } => format!("error: {e}"),
        _ => format!("failed to join discovery cluster ({e})"),
    }
}

impl MemberError {
    /// Discovery found `size` members registered before this one (etcd's ErrFullCluster):
    /// with `--discovery-fallback proxy` the member runs as a proxy instead.
    pub fn is_full_discovery_cluster(&self) -> bool {
        matches!(self, MemberError::Discovery(e) if e.is_full_cluster())
    }
}

/// The data file inside the data dir (etcd keeps `member/snap/db` and `member/wal` there).
pub fn data_file_path(data_dir: &str) -> PathBuf {
    Path::new(data_dir).join("member").join("detcd.db")
}

/// The raft log file: beside the data file, or in `--wal-dir` when given (etcd keeps its
/// WAL files directly in that directory).
pub fn log_file_path(data_dir: &str, wal_dir: Option<&str>) -> PathBuf {
    match wal_dir {
        Some(dir) => Path::new(dir).join("detcd.wal"),
        None => Path::new(data_dir).join("member").join("detcd.wal"),
    }
}

/// Creates `--wal-dir` (owner-only, as etcd's fileutil.TouchDirAll) if it does not exist;
/// returns whether it did.
#[cfg(not(madsim))]
fn create_wal_dir(dir: &str) -> Result<bool, MemberError> {
    if Path::new(dir).exists() {
        return Ok(false);
    }
    let de = |e: std::io::Error| MemberError::DataDir {
        path: dir.to_string(),
        err: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(de)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(de)?;
    }
    Ok(true)
}

fn storage_err(e: impl std::fmt::Display) -> MemberError {
    MemberError::Storage(LogError::Storage(e.to_string()))
}

/// Opens (creating if needed) the member's data file.
#[cfg(not(madsim))]
pub fn open_data_file(data_dir: &str) -> Result<redb::Database, MemberError> {
    let dir = Path::new(data_dir).join("member");
    let de = |e: std::io::Error| MemberError::DataDir {
        path: data_dir.to_string(),
        err: e.to_string(),
    };
    std::fs::create_dir_all(&dir).map_err(de)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(de)?;
    }
    // redb repairs a file that was not closed (a crash, kill -9) while opening it, reading it
    // whole: say so, since a large store then starts seconds later.
    let repairing = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = repairing.clone();
    let path = data_file_path(data_dir);
    let shown = path.display().to_string();
    let started = std::time::Instant::now();
    let db = redb::Builder::new()
        .set_cache_size(DATA_FILE_CACHE_BYTES)
        .set_repair_callback(move |_| {
            if !flag.replace(true) {
                tracing::warn!(path = %shown, "the data file was not closed cleanly; repairing it");
            }
        })
        .create(&path)
        .map_err(storage_err)?;
    if repairing.get() {
        tracing::info!(
            path = %path.display(),
            took_ms = started.elapsed().as_millis() as u64,
            "repaired the data file"
        );
    }
    Ok(db)
}

/// redb's page cache for the data file. redb's default (1 GiB) alone would put a member at a
/// million keys above etcd 3.4's whole RSS there; pages beyond the cache are read through the
/// OS page cache, as etcd's mmap reads them.
#[cfg(not(madsim))]
const DATA_FILE_CACHE_BYTES: usize = 256 << 20;

/// Host name resolution for the bootstrap comparison of advertised URLs.
fn resolve_host(host: &str) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

async fn listen_addr(url: &detcd_core::config::Url) -> Result<SocketAddr, MemberError> {
    let host = url.host.clone();
    let mut addrs = tokio::net::lookup_host((host.as_str(), url.port))
        .await
        .map_err(|_| MemberError::Resolve(host.clone()))?
        .collect::<Vec<_>>();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.into_iter().next().ok_or(MemberError::Resolve(host))
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs a member until it fails. Never returns Ok in normal operation.
#[cfg(not(madsim))]
pub async fn run_member(cfg: Config) -> Result<(), MemberError> {
    let created = !Path::new(&cfg.data_dir).exists();
    let data_dir = cfg.data_dir.clone();
    let db = open_data_file(&cfg.data_dir)?;
    let wal_dir = cfg.wal_dir.clone();
    let wal_dir_created = match &wal_dir {
        Some(dir) => create_wal_dir(dir)?,
        None => false,
    };
    let log_path = log_file_path(&cfg.data_dir, wal_dir.as_deref());
    let log_file = crate::log_file::FileLog::open(&log_path).map_err(|e| MemberError::DataDir {
        path: log_path.display().to_string(),
        err: e.to_string(),
    })?;
    let path = data_file_path(&cfg.data_dir);
    let db_size = Arc::new(move || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
    let snap_dir = Path::new(&cfg.data_dir).join("member").join("snap");
    let snapshot_files =
        crate::snapshot_files::DirSnapshots::open(snap_dir.clone()).map_err(|e| {
            MemberError::DataDir {
                path: snap_dir.display().to_string(),
                err: e.to_string(),
            }
        })?;
    let data_path = data_file_path(&cfg.data_dir);
    let defragmenter: crate::node::Defragmenter = Arc::new(move |db: &redb::Database| {
        crate::defrag::defragment(db, &data_path).map_err(|e| e.to_string())
    });
    let dns = default_dns(&cfg)?;
    let mut res = run_member_with_dns(
        cfg,
        db,
        Box::new(log_file),
        db_size,
        Arc::new(snapshot_files),
        Some(defragmenter),
        dns,
    )
    .await;
    if let Err(MemberError::Storage(LogError::Corrupt(why))) = &res {
        if why.contains("raft log file") {
            // Name the file: the operator restores or removes exactly this one.
            res = Err(MemberError::Storage(LogError::Corrupt(format!(
                "{}: {why}",
                log_path.display()
            ))));
        }
    }
    if created
        && matches!(
            res,
            Err(MemberError::Bootstrap(_)
                | MemberError::Srv(_)
                | MemberError::DnsTimeout(_)
                | MemberError::Discovery(_)
                | MemberError::DiscoveryV3(_))
        )
    {
        // A refused start leaves nothing behind: the next attempt starts as fresh as this one.
        let _ = std::fs::remove_dir_all(&data_dir);
        if let (true, Some(dir)) = (wal_dir_created, &wal_dir) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    res
}

/// Runs a member on an already opened data file and raft log file (the simulator passes its
/// simulated disks). `defragmenter` replaces the data file with a compact copy (None: the
/// storage cannot, and Defragment answers so). Names resolve through the system resolver (or
/// `--discovery-srv-resolver`); under madsim, through no resolver at all (the simulator's SRV
/// scenarios pass their own to [`run_member_with_dns`]).
pub async fn run_member_with(
    cfg: Config,
    db: redb::Database,
    log_file: Box<dyn LogFile>,
    db_size: Arc<dyn Fn() -> u64 + Send + Sync>,
    snapshot_files: Arc<dyn SnapshotFiles>,
    defragmenter: Option<crate::node::Defragmenter>,
) -> Result<(), MemberError> {
    let dns = default_dns(&cfg)?;
    run_member_with_dns(
        cfg,
        db,
        log_file,
        db_size,
        snapshot_files,
        defragmenter,
        dns,
    )
    .await
}

/// The resolver a member uses: the system's configuration or `--discovery-srv-resolver`, set up
/// only when DNS SRV discovery or the override asks for it (a static member never needs it, so
/// a host without a resolver configuration starts it as before). Under madsim: none.
fn default_dns(cfg: &Config) -> Result<crate::dns::SharedDns, MemberError> {
    #[cfg(not(madsim))]
    if !cfg.srv.domain.is_empty() || !cfg.srv.resolver.is_empty() {
        return Ok(Arc::new(crate::dns::SystemDns::new(&cfg.srv.resolver)?));
    }
    let _ = cfg;
    Ok(Arc::new(crate::dns::NoDns))
}

/// DNS SRV discovery (etcd's `PeerURLsMapAndToken` for `--discovery-srv`): looks the records
/// up through `dns` and replaces `cfg.initial_cluster` with the cluster they describe. Returns
/// the resolved host names, for the bootstrap's comparison of advertised URLs.
async fn srv_initial_cluster(
    cfg: &mut Config,
    dns: crate::dns::SharedDns,
) -> Result<detcd_core::srv::HostAddrs, MemberError> {
    let lookups = crate::dns::lookup_server_srv(
        dns,
        &cfg.srv.domain,
        &cfg.srv.name,
        &cfg.initial_advertise_peer_urls,
        crate::dns::Retry::default(),
    )
    .await?;
    let found = detcd_core::srv::cluster_from_srv(
        &cfg.srv.domain,
        &cfg.srv.name,
        &cfg.name,
        &cfg.initial_advertise_peer_urls,
        !cfg.peer_tls.trusted_ca_file.is_empty(),
        &lookups,
    );
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "failed to resolve during SRV discovery");
            return Err(e.into());
        }
    };
    for note in &found.notes {
        tracing::info!(discovery_srv = %cfg.srv.domain, "SRV service not used: {note}");
    }
    for pair in &found.pairs {
        tracing::info!(node = %pair, "got bootstrap from DNS for etcd-server");
    }
    cfg.initial_cluster = found.members;
    Ok(lookups.hosts)
}

/// etcd discovery (`--discovery`, etcdserver's `v2discovery.JoinCluster`): registers this
/// member under the discovery URL, waits for the others, and replaces `cfg.initial_cluster`
/// with the cluster found; the member IDs then hash the whole discovery URL as the token, as
/// etcd's do (etcd-facts §1).
async fn discovery_initial_cluster(cfg: &mut Config) -> Result<(), MemberError> {
    use detcd_core::discovery::{local_value, member_id_v2, DiscoveryError, V2Discovery};
    let url = cfg.discovery.url.clone();
    let id = member_id_v2(&cfg.initial_advertise_peer_urls, &url);
    let value = local_value(&cfg.name, &cfg.initial_advertise_peer_urls);
    let mut machine = V2Discovery::join(&url, id, &value).map_err(MemberError::Discovery)?;
    if crate::mutation::active("discovery-ignore-size") {
        machine = machine.with_size_ignored();
    }
    let proxy = Some(cfg.discovery.proxy.as_str()).filter(|p| !p.is_empty());
    let found = match crate::discovery::run_v2(machine, proxy).await {
        Ok(found) => found,
        Err(e) => {
            let plain = matches!(
                e,
                DiscoveryError::SizeNotFound { .. } | DiscoveryError::BadUrl { .. }
            );
            if !plain && (!e.is_full_cluster() || !cfg.discovery.fallback_proxy) {
                let line = discovery_failure(&e);
                for log in e.etcd_exit_advice(&cfg.name, &url, &cfg.data_dir) {
                    if log.text != line {
                        crate::discovery::emit(&log);
                    }
                }
            }
            return Err(MemberError::Discovery(e));
        }
    };
    let members = detcd_core::config::parse_initial_cluster(&found).map_err(|e| {
        MemberError::Discovery(DiscoveryError::InvalidUrl {
            cluster: found.clone(),
            reason: e.to_string(),
        })
    })?;
    if members.is_empty() {
        return Err(MemberError::Discovery(DiscoveryError::BadSizeKey {
            value: "0".into(),
        }));
    }
    tracing::info!(initial_cluster = %found, "got the initial cluster from the discovery service");
    cfg.initial_cluster = members;
    cfg.initial_cluster_token = url;
    Ok(())
}

/// etcd 3.6's v3 discovery (`--discovery-token` with `--discovery-endpoints`, etcdserver's
/// `v3discovery.JoinCluster`): registers this member under the token in the discovery
/// cluster, waits for the others, and replaces `cfg.initial_cluster` with the cluster found.
/// As etcd 3.6's `PeerURLsMapAndToken`, the token is also the initial-cluster token, so the
/// member IDs hash the advertised peer URLs with it ([`member_id_v3`]). A failure prints
/// etcd 3.6's etcdmain warnings.
///
/// [`member_id_v3`]: detcd_core::discovery::member_id_v3
async fn discovery_v3_initial_cluster(cfg: &mut Config) -> Result<(), MemberError> {
    use crate::discovery::V3Error;
    use detcd_core::discovery::{local_value, member_id_v3, V3Discovery, V3DiscoveryError};
    let v3 = cfg.discovery.v3.clone();
    let id = member_id_v3(&cfg.initial_advertise_peer_urls, &v3.token);
    let value = local_value(&cfg.name, &cfg.initial_advertise_peer_urls);
    tracing::info!("Bootstrapping cluster using v3 discovery.");
    let result = match V3Discovery::join(&v3.token, id, &value, v3.request_timeout_ms) {
        Ok(machine) => crate::discovery::run_v3(machine, &v3).await,
        Err(e) => Err(V3Error::Discovery(e)),
    };
    let found = match result {
        Ok(found) => found,
        Err(e) => {
            let err = MemberError::DiscoveryV3(e);
            // etcd 3.6's etcdmain, for every discovery error but v2's duplicate ID or name.
            tracing::warn!(
                discovery_token = %v3.token,
                error = %err,
                "failed to bootstrap; discovery token was already used"
            );
            tracing::warn!(
                "do not reuse discovery token; generate a new one to bootstrap a cluster"
            );
            return Err(err);
        }
    };
    let members = detcd_core::config::parse_initial_cluster(&found).map_err(|e| {
        MemberError::DiscoveryV3(V3Error::Discovery(V3DiscoveryError::InvalidUrl {
            cluster: found.clone(),
            reason: e.to_string(),
        }))
    })?;
    tracing::info!(initial_cluster = %found, "got the initial cluster from the discovery service");
    cfg.initial_cluster = members;
    cfg.initial_cluster_token = v3.token;
    Ok(())
}

/// Resolves every host name of the advertised peer URLs and the initial cluster through `dns`
/// (for `--discovery-srv-resolver`: names the system resolver may not know).
async fn resolve_bootstrap_hosts(
    cfg: &Config,
    dns: &dyn crate::dns::Dns,
) -> detcd_core::srv::HostAddrs {
    let mut hosts = detcd_core::srv::HostAddrs::new();
    let urls = cfg
        .initial_advertise_peer_urls
        .iter()
        .chain(cfg.initial_cluster.iter().flat_map(|m| m.peer_urls.iter()));
    for u in urls {
        if u.ip().is_none() && !hosts.contains_key(&u.host) {
            let got = crate::dns::resolve_host(dns, &u.host)
                .await
                .map_err(|e| e.message);
            hosts.insert(u.host.clone(), got);
        }
    }
    hosts
}

/// [`run_member_with`] with the resolver host names (DNS SRV discovery, peer URLs) go through.
pub async fn run_member_with_dns(
    mut cfg: Config,
    db: redb::Database,
    mut log_file: Box<dyn LogFile>,
    db_size: Arc<dyn Fn() -> u64 + Send + Sync>,
    snapshot_files: Arc<dyn SnapshotFiles>,
    defragmenter: Option<crate::node::Defragmenter>,
    dns: crate::dns::SharedDns,
) -> Result<(), MemberError> {
    // Names go through `dns` when SRV discovery or a resolver override asks for it; else the
    // system resolver resolves them as it always did.
    let use_dns = !cfg.srv.domain.is_empty() || !cfg.srv.resolver.is_empty();
    // TLS first: bad certificate files stop the member before anything else happens.
    let tls_plan = detcd_core::tls::plan(&cfg).map_err(|e| MemberError::Tls(e.to_string()))?;
    let server_name = match &tls_plan.peer_dial.verify {
        detcd_core::tls::PeerVerify::SystemRoots { server_name } => Some(server_name.clone()),
        _ => None,
    };
    #[cfg(not(madsim))]
    let (client_acceptor, peer_acceptor, peer_tls): (Acceptor, Acceptor, PeerDialTls) = {
        let tls = crate::tls::Tls::setup(&tls_plan).map_err(|e| MemberError::Tls(e.0))?;
        (
            tls.client,
            tls.peer,
            PeerDialTls {
                config: Some(tls.peer_dial),
                files: tls.files,
                dns: use_dns.then(|| dns.clone()),
                server_name,
            },
        )
    };
    // The simulated node takes the same decisions and speaks plaintext.
    #[cfg(madsim)]
    let (client_acceptor, peer_acceptor, peer_tls): (Acceptor, Acceptor, PeerDialTls) = {
        let _ = &tls_plan;
        (
            None,
            None,
            PeerDialTls {
                dns: use_dns.then(|| dns.clone()),
                server_name,
            },
        )
    };
    let state = if RaftLog::exists(&db)? {
        DataDirState::HasLog
    } else {
        DataDirState::Empty
    };
    let resolved = if state == DataDirState::HasLog {
        if !cfg.srv.domain.is_empty() {
            tracing::info!(discovery_srv = %cfg.srv.domain, "--discovery-srv ignored: the data dir holds a log");
        }
        let wal = match &cfg.wal_dir {
            Some(dir) => dir.clone(),
            None => Path::new(&cfg.data_dir)
                .join("member")
                .join("wal")
                .display()
                .to_string(),
        };
        if !cfg.discovery.url.is_empty() {
            tracing::warn!(
                "discovery token ignored since a cluster has already been initialized. Valid log found at {wal:?}"
            );
        }
        if cfg.discovery.v3.is_set() {
            // etcd 3.6's bootstrapClusterWithWAL.
            tracing::warn!(
                wal_dir = %wal,
                "discovery token is ignored since cluster already initialized; valid logs are found"
            );
        }
        None
    } else if !cfg.discovery.url.is_empty() {
        discovery_initial_cluster(&mut cfg).await?;
        use_dns.then_some(resolve_bootstrap_hosts(&cfg, dns.as_ref()).await)
    } else if cfg.discovery.v3.is_set() {
        if cfg.initial_cluster_state == detcd_core::config::ClusterState::New {
            discovery_v3_initial_cluster(&mut cfg).await?;
        } else {
            // etcd 3.6 discovers only for a new cluster; joining an existing one it takes
            // PeerURLsMapAndToken's map of this member alone, with the token.
            cfg.initial_cluster = vec![detcd_core::config::InitialMember {
                name: cfg.name.clone(),
                peer_urls: cfg.initial_advertise_peer_urls.clone(),
            }];
            cfg.initial_cluster_token = cfg.discovery.v3.token.clone();
        }
        use_dns.then_some(resolve_bootstrap_hosts(&cfg, dns.as_ref()).await)
    } else if !cfg.srv.domain.is_empty() {
        Some(srv_initial_cluster(&mut cfg, dns.clone()).await?)
    } else if use_dns {
        Some(resolve_bootstrap_hosts(&cfg, dns.as_ref()).await)
    } else {
        None
    };
    let decision = match &resolved {
        Some(hosts) => {
            let lookup = |h: &str| -> Vec<std::net::IpAddr> {
                hosts
                    .get(h)
                    .or_else(|| hosts.get(h.trim_end_matches('.')))
                    .and_then(|r| r.as_ref().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            bootstrap::decide(&cfg, state, &lookup)?
        }
        None => bootstrap::decide(&cfg, state, &resolve_host)?,
    };
    let (log, member_id, cluster_id, restarted) = match decision {
        Bootstrap::Restart => {
            let mut log = RaftLog::load(&db, log_file.as_mut())?;
            let txn = db.begin_read().map_err(storage_err)?;
            let members = Membership::load(&txn)?;
            let meta = txn.open_table(META).map_err(storage_err)?;
            let member_id = meta
                .get(meta_keys::MEMBER_ID)
                .map_err(storage_err)?
                .and_then(|v| v.value().try_into().ok().map(u64::from_be_bytes))
                .ok_or_else(|| LogError::Corrupt("member id missing from data file".into()))?;
            if members.is_removed(member_id) {
                return Err(BootstrapError::Removed(member_id).into());
            }
            if cfg.force_new_cluster {
                force_new_cluster(&mut log, log_file.as_mut(), member_id, &members)?;
            }
            tracing::info!(
                member = %format_id(member_id),
                cluster = %format_id(members.cluster_id()),
                data_dir = %cfg.data_dir,
                "restarting member from its log; --initial-cluster* flags are ignored"
            );
            (log, member_id, members.cluster_id(), true)
        }
        Bootstrap::NewCluster {
            cluster_id,
            local_id,
            members,
        } => {
            let peers: Vec<(u64, Vec<String>)> = members
                .iter()
                .map(|m| (m.id, m.peer_urls.iter().map(|u| u.to_string()).collect()))
                .collect();
            // Before writing anything: a running cluster of another identity is fatal, and so
            // is one that already saw this member start (its data dir was lost).
            let remotes =
                fetch_remote_clusters(&other_peer_urls(&members, local_id), &peer_tls).await;
            if crate::mutation::active("accept-wiped-member") {
                bootstrap::check_new_member(local_id, cluster_id, &[])?;
            } else {
                bootstrap::check_new_member(local_id, cluster_id, &remotes)?;
            }
            let log = detcd_core::state::initialize_new_member(
                &db,
                log_file.as_mut(),
                cluster_id,
                local_id,
                &peers,
            )?;
            tracing::info!(
                member = %format_id(local_id),
                cluster = %format_id(cluster_id),
                "starting a new cluster member"
            );
            (log, local_id, cluster_id, false)
        }
        Bootstrap::Join {
            local_name,
            members,
        } => {
            let local = members.iter().find(|m| m.name == local_name).map(|m| m.id);
            let urls = other_peer_urls(&members, local.unwrap_or(0));
            let remotes = fetch_remote_clusters(&urls, &peer_tls).await;
            // The answer of a member that already lists this one (a peer lagging behind the
            // `member add` would not), else the first in URL order, as etcd takes it.
            let mine: Vec<String> = cfg
                .initial_advertise_peer_urls
                .iter()
                .map(|u| u.to_string())
                .collect();
            let remote = remotes
                .iter()
                .find(|r| {
                    r.members
                        .iter()
                        .any(|m| m.peer_urls.iter().any(|u| mine.contains(u)))
                })
                .or(remotes.first())
                .ok_or(BootstrapError::NoRemoteCluster)?;
            let plan = bootstrap::plan_join(&local_name, &members, remote)?;
            let log = detcd_core::state::initialize_member(
                &db,
                log_file.as_mut(),
                plan.cluster_id,
                plan.local_id,
                plan.members,
                detcd_core::state::NewMember::Joining {
                    removed: plan.removed,
                },
            )?;
            tracing::info!(
                member = %format_id(plan.local_id),
                cluster = %format_id(plan.cluster_id),
                "joining a running cluster (--initial-cluster-state existing)"
            );
            (log, plan.local_id, plan.cluster_id, false)
        }
    };

    let db = Arc::new(db);
    let peers: Vec<(u64, Vec<String>)> = {
        let txn = db.begin_read().map_err(storage_err)?;
        Membership::load(&txn)?
            .members()
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect()
    };
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let shared_cell = Arc::new(OnceLock::new());
    let transport = Arc::new(Transport::start(
        member_id,
        cluster_id,
        &peers,
        shared_cell.clone(),
        ev_tx.clone(),
        peer_tls.clone(),
        snapshot_files.clone(),
    ));
    let heartbeat = Duration::from_millis(cfg.heartbeat_interval.max(1));
    let election_ticks = (cfg.election_timeout / cfg.heartbeat_interval.max(1)).max(2) as usize;
    let request_timeout = Duration::from_secs(5) + 2 * Duration::from_millis(cfg.election_timeout);
    let level = if cfg.metrics_extensive {
        crate::metrics::Level::Extensive
    } else {
        crate::metrics::Level::Basic
    };
    let metrics = Arc::new(crate::metrics::Metrics::new(
        member_id,
        level,
        db_size.clone(),
    ));
    metrics.set_quota(if cfg.quota_backend_bytes < 0 {
        0
    } else {
        cfg.effective_quota_backend_bytes() as u64
    });
    let params = NodeParams {
        member_id,
        cluster_id,
        heartbeat,
        election_ticks,
        snapshot_count: cfg.snapshot_count,
        request_timeout,
        start_unix_ms: now_unix_ms(),
        attributes: MemberAttributes {
            member_id,
            name: cfg.name.clone(),
            client_urls: cfg
                .advertise_client_urls
                .iter()
                .map(|u| u.to_string())
                .collect(),
        },
        strict_reconfig_check: cfg.strict_reconfig_check,
        max_learners: cfg.max_learners as usize,
        auto_promote_learners: cfg.auto_promote_learners,
        lease_checkpoint: cfg.lease_checkpoint,
        pre_vote: cfg.pre_vote,
        catch_up_entries: cfg.snapshot_catchup_entries,
        metrics,
    };
    let storage = NodeStorage {
        log,
        log_file,
        db,
        snapshot_files: snapshot_files.clone(),
        defragmenter,
    };
    let (node, handle, inputs) = Node::new(params, storage, transport, (ev_tx, ev_rx), restarted)?;
    let _ = shared_cell.set(handle.shared.clone());

    let api = Api {
        node: handle.clone(),
        max_request_bytes: cfg.max_request_bytes as usize,
        request_timeout,
        db_size,
        peer_tls: peer_tls.clone(),
        strict_reconfig_check: cfg.strict_reconfig_check,
        watch_progress_interval: Duration::from_millis(cfg.watch_progress_notify_interval_ms),
        election_timeout: Duration::from_millis(cfg.election_timeout),
        max_txn_ops: cfg.max_txn_ops as usize,
        quota_bytes: (cfg.quota_backend_bytes >= 0)
            .then(|| cfg.effective_quota_backend_bytes() as u64),
        http2: crate::api::Http2Settings {
            max_concurrent_streams: cfg.max_concurrent_streams,
            keepalive_interval: (cfg.grpc_keepalive_interval_ms > 0)
                .then(|| Duration::from_millis(cfg.grpc_keepalive_interval_ms)),
            keepalive_timeout: Duration::from_millis(cfg.grpc_keepalive_timeout_ms),
        },
        enable_v2: cfg.enable_v2,
        client_tls: cfg.listen_client_urls.iter().any(|u| u.scheme.is_tls()),
    };
    // A server that stops (its listener failed) stops the member.
    let (server_err_tx, mut server_err) = mpsc::channel::<MemberError>(4);
    for url in &cfg.listen_peer_urls {
        let svc = PeerService::new(
            handle.shared.clone(),
            &inputs,
            snapshot_files.clone(),
            request_timeout,
        );
        let listener = bind(url).await?;
        let errs = server_err_tx.clone();
        let acceptor = tls_for(url, &peer_acceptor);
        tokio::spawn(async move {
            if let Err(e) = serve_peer(listener, svc, acceptor).await {
                let _ = errs.send(e).await;
            }
        });
    }
    // A graceful stop closes the client listeners first (see `ClientStop`).
    let (client_stop, mut clients_gone) = ClientStop::new();
    for port in client_ports(&cfg.listen_client_urls) {
        // Bound now (a taken port stops the start), served once this member has published
        // itself to the cluster, as etcd serves clients after ReadyNotify: a client that
        // connects earlier waits instead of reaching a member that cannot answer yet.
        let listener = bind(&port.url).await?;
        let stop = client_stop.clone();
        let errs = server_err_tx.clone();
        let api = api.clone();
        let acceptor = if port.tls {
            client_acceptor.clone()
        } else {
            None
        };
        let plain_too = port.tls && port.plain.is_some();
        tokio::spawn(async move {
            let mut ready = api.node.shared.ready.subscribe();
            let mut stopping = stop.signal.clone();
            tokio::select! {
                r = ready.wait_for(|r| *r) => if r.is_err() { return },
                _ = stopping.wait_for(|s| *s) => return,
            }
            if let Some(address) = &port.plain {
                tracing::warn!(address = %address, "serving client traffic insecurely; this is strongly discouraged!");
            }
            if let Err(e) = serve_client(listener, api, acceptor, plain_too, stop).await {
                let _ = errs.send(e).await;
            }
        });
    }
    let stop_clients = client_stop.signal_sender();
    drop(client_stop);
    for url in &cfg.listen_metrics_urls {
        // etcd's serveMetrics: /metrics and the health endpoints, from the start (they say
        // how the member is doing before it serves clients too); https with the client TLS.
        let listener = bind(url).await?;
        let errs = server_err_tx.clone();
        let acceptor = tls_for(url, &client_acceptor);
        let app = crate::http::metrics_routes(handle.clone(), request_timeout);
        tracing::info!(address = %url, "serving metrics and health");
        tokio::spawn(async move {
            if let Err(e) = serve_http(listener, app, acceptor).await {
                let _ = errs.send(e).await;
            }
        });
    }
    tracing::info!(
        name = %cfg.name,
        member = %format_id(member_id),
        "serving peers on {} and clients on {}",
        join_urls(&cfg.listen_peer_urls),
        join_urls(&cfg.listen_client_urls)
    );
    // The driver is a task on the runtime's workers, not this thread: the tasks it wakes
    // (peer senders, waiting clients) then usually run on the same worker without a
    // cross-thread wake-up, which is most of a single client's latency.
    let mut driver = tokio::spawn(node.run());
    let compactor = cfg
        .auto_compaction
        .map(|mode| tokio::spawn(crate::compactor::run(api.clone(), mode)));
    let _stop_compactor = AbortOnDrop(compactor);
    let unix_sockets: Vec<String> = cfg
        .listen_peer_urls
        .iter()
        .chain(&cfg.listen_client_urls)
        .chain(&cfg.listen_metrics_urls)
        .filter_map(|u| u.unix_path())
        .collect();
    tokio::select! {
        biased;
        res = &mut driver => match res {
            Ok(res) => { res?; Ok(()) }
            Err(e) => Err(MemberError::Node(NodeError::Fatal(format!("raft driver failed: {e}")))),
        },
        Some(e) = server_err.recv() => {
            driver.abort();
            Err(e)
        }
        signal = stop_signal() => {
            // etcd's interrupt handler: EtcdServer.Stop transfers leadership first, so the
            // cluster need not wait an election timeout (etcdserver/server.go).
            tracing::info!(signal = signal_name(signal), "received signal; shutting down");
            // etcd's Etcd.Close: the client servers stop first. New connections are refused;
            // open ones are told to go (HTTP/2 GOAWAY) and their requests in flight are
            // answered, for up to the request timeout (a watch stream never ends by itself:
            // those connections are cut at exit, as etcd's grpc.Stop cuts them).
            let _ = stop_clients.send(true);
            let _ = tokio::time::timeout(request_timeout, clients_gone.recv()).await;
            if let Err(e) = handle.transfer_leadership_for_stop(request_timeout).await {
                tracing::warn!(
                    local_member_id = %format_id(member_id),
                    error = %e,
                    "leadership transfer failed"
                );
            }
            driver.abort();
            // The driver's end drops its handle on the data file (and stops new writes).
            let _ = (&mut driver).await;
            close_data_file(&handle.shared).await;
            // etcd's listeners unlink their socket files as they close.
            for path in &unix_sockets {
                let _ = std::fs::remove_file(path);
            }
            Err(MemberError::Signaled(signal))
        }
    }
}

/// How long a graceful stop waits for the last users of the data file (a read beginning, a
/// commit, snapshot install or defragmentation on a blocking thread) before leaving it
/// unclosed.
const DATA_FILE_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes the data file at a graceful stop, after the raft driver has ended: redb records a
/// clean shutdown, so the next start need not repair the file (redb reads an unclosed file
/// whole to rebuild its allocator state: a second for a million keys). The driver's open
/// batch of applied entries is dropped with it, not committed: the next start applies them
/// again from the raft log, as after a crash (etcd commits its batch as it stops). Reads
/// begun afterwards fail with `etcdserver: server stopped`. A file still in use after
/// [`DATA_FILE_CLOSE_WAIT`] is left for the next start to repair.
async fn close_data_file(shared: &crate::node::Shared) {
    let Some(mut db) = shared.take_data_file() else {
        return;
    };
    let deadline = tokio::time::Instant::now() + DATA_FILE_CLOSE_WAIT;
    let db = loop {
        // No job starts any more (the driver has ended); the Arc is shared only while a
        // read begins.
        if shared.disk_jobs.running() == 0 {
            match Arc::try_unwrap(db) {
                Ok(db) => break db,
                Err(in_use) => db = in_use,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "the data file is still in use; left unclosed, the next start repairs it"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // close() writes and syncs redb's allocator state and header: not on an async worker.
    let (tx, rx) = tokio::sync::oneshot::channel();
    crate::node::off_driver(move || {
        let _ = tx.send(db.close());
    });
    match rx.await {
        Ok(Ok(())) => tracing::info!("closed the data file"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "closing the data file failed; the next start repairs it")
        }
        Err(_) => tracing::warn!("closing the data file did not finish"),
    }
}

/// Resolves with the number of the first SIGTERM or SIGINT (etcd's HandleInterrupts); never
/// under madsim, or when the handlers cannot be installed.
#[cfg(not(madsim))]
async fn stop_signal() -> i32 {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn next(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let (term, int) = (SignalKind::terminate(), SignalKind::interrupt());
    let (mut on_term, mut on_int) = (signal(term).ok(), signal(int).ok());
    tokio::select! {
        _ = next(&mut on_term) => term.as_raw_value(),
        _ = next(&mut on_int) => int.as_raw_value(),
    }
}

#[cfg(madsim)]
async fn stop_signal() -> i32 {
    std::future::pending().await
}

/// Go's name for a signal, as etcd logs it (`os.Signal.String()`).
fn signal_name(signal: i32) -> &'static str {
    match signal {
        2 => "interrupt",
        15 => "terminated",
        _ => "signal",
    }
}

/// Aborts a task when the member stops (its loop never ends by itself).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// `--force-new-cluster`: rewrites the log so this member restarts as the only member of its
/// cluster (the removals apply as raft starts), and logs what it did as etcd does.
fn force_new_cluster(
    log: &mut RaftLog,
    log_file: &mut dyn LogFile,
    member_id: u64,
    members: &Membership,
) -> Result<(), MemberError> {
    let forced = log.force_new_cluster(member_id)?;
    log_file
        .replace(&log.file_image())
        .map_err(LogError::from)?;
    let removed: Vec<String> = forced.removed.iter().map(|id| format_id(*id)).collect();
    tracing::warn!(
        local_member_id = %format_id(member_id),
        cluster_id = %format_id(members.cluster_id()),
        commit_index = forced.commit,
        removing = %removed.join(","),
        "forcing restart member: it is now the only member of its cluster (--force-new-cluster)"
    );
    Ok(())
}

/// The peer URLs of every member but `local_id`, sorted (etcd's getRemotePeerURLs): where a
/// starting member asks about the running cluster.
fn other_peer_urls(members: &[BootstrapMember], local_id: u64) -> Vec<String> {
    let mut urls: Vec<String> = members
        .iter()
        .filter(|m| m.id != local_id)
        .flat_map(|m| m.peer_urls.iter().map(|u| u.to_string()))
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

fn join_urls(urls: &[detcd_core::config::Url]) -> String {
    urls.iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A listener's TLS: the acceptor for `https://` URLs, None for `http://`.
/// One client listening address and the schemes served on it.
struct ClientPort {
    /// The first listen URL with this address (what is bound).
    url: detcd_core::config::Url,
    /// A plaintext URL (`http://`, `unix://`) names this address.
    plain: Option<String>,
    /// A TLS URL (`https://`, `unixs://`) names this address.
    tls: bool,
}

/// `--listen-client-urls` grouped by address: etcd serves `http://a:p` and `https://a:p`
/// together on one port (its e2e "client TLS and non-TLS" configuration), telling each
/// connection's scheme by its first byte.
fn client_ports(urls: &[detcd_core::config::Url]) -> Vec<ClientPort> {
    let mut ports: Vec<ClientPort> = Vec::new();
    for url in urls {
        let same = |p: &&mut ClientPort| {
            p.url.host == url.host
                && p.url.port == url.port
                && p.url.scheme.is_unix() == url.scheme.is_unix()
        };
        let port = match ports.iter_mut().find(same) {
            Some(p) => p,
            None => {
                ports.push(ClientPort {
                    url: url.clone(),
                    plain: None,
                    tls: false,
                });
                ports.last_mut().expect("just pushed")
            }
        };
        if url.scheme.is_tls() {
            port.tls = true;
        } else {
            port.plain.get_or_insert_with(|| url.to_string());
        }
    }
    ports
}

#[cfg(not(madsim))]
type Acceptor = Option<crate::tls::TlsAcceptor>;
#[cfg(madsim)]
type Acceptor = Option<std::convert::Infallible>;

fn tls_for(url: &detcd_core::config::Url, acceptor: &Acceptor) -> Acceptor {
    match url.scheme.is_tls() {
        true => acceptor.clone(),
        false => None,
    }
}

/// How long a TLS handshake may take before the connection is dropped.
#[cfg(not(madsim))]
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(not(madsim))]
type Listener = crate::listener::Listener;
#[cfg(madsim)]
type Listener = SocketAddr;

/// Binds a listen URL: TCP at its resolved address, or the unix socket file it names.
#[cfg(not(madsim))]
async fn bind(url: &detcd_core::config::Url) -> Result<Listener, MemberError> {
    if let Some(path) = url.unix_path() {
        return Listener::unix(&path).map_err(|e| MemberError::Listen {
            addr: url.to_string(),
            err: e.to_string(),
        });
    }
    let addr = listen_addr(url).await?;
    Listener::tcp(addr).await.map_err(|e| MemberError::Listen {
        addr: addr.to_string(),
        err: e.to_string(),
    })
}

/// Under madsim every member listens on simulated TCP; unix sockets are not simulated.
#[cfg(madsim)]
async fn bind(url: &detcd_core::config::Url) -> Result<Listener, MemberError> {
    if url.scheme.is_unix() {
        return Err(MemberError::Listen {
            addr: url.to_string(),
            err: "unix sockets are not simulated".to_string(),
        });
    }
    listen_addr(url).await
}

#[cfg(not(madsim))]
async fn serve_peer(
    listener: Listener,
    svc: PeerService,
    tls: Acceptor,
) -> Result<(), MemberError> {
    let addr = listener.local_addr();
    let svc = PeerServer::new(svc)
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
    if let Some(acceptor) = tls {
        return tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(svc)
            .serve_with_incoming(tls_incoming(listener, acceptor))
            .await
            .map_err(|e| MemberError::Listen {
                addr,
                err: e.to_string(),
            });
    }
    let incoming = tokio_stream_from(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(svc)
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| MemberError::Listen {
            addr,
            err: e.to_string(),
        })
}

#[cfg(madsim)]
async fn serve_peer(addr: Listener, svc: PeerService, _tls: Acceptor) -> Result<(), MemberError> {
    tonic::transport::Server::builder()
        .add_service(PeerServer::new(svc))
        .serve(addr)
        .await
        .map_err(|e| MemberError::Listen {
            addr: addr.to_string(),
            err: e.to_string(),
        })
}

#[cfg(not(madsim))]
fn tokio_stream_from(
    listener: Listener,
) -> impl futures::Stream<Item = std::io::Result<crate::listener::Conn>> {
    async_stream::stream! {
        loop {
            yield listener.accept().await.map(|(s, _)| s);
        }
    }
}

/// Accepts TLS connections, each handshake in its own task so a slow or refused client does not
/// hold up the others; refused handshakes are logged with the reason.
#[cfg(not(madsim))]
fn tls_incoming(
    listener: Listener,
    acceptor: crate::tls::TlsAcceptor,
) -> impl futures::Stream<Item = std::io::Result<crate::tls::ServerIo>> {
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("peer accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(crate::tls::ServerIo(tls)).await;
                    }
                    // Logged by the acceptor, in etcd's words.
                    Ok(Err(_)) => {}
                    Err(_) => tracing::warn!(
                        "rejected connection from {peer} on the peer port: TLS handshake timed out"
                    ),
                }
            });
        }
    });
    async_stream::stream! {
        while let Some(c) = rx.recv().await {
            yield Ok::<_, std::io::Error>(c);
        }
    }
}

/// gRPC and etcd's HTTP endpoints (/health, /version) share the client port, as in etcd.
#[cfg(not(madsim))]
async fn serve_client(
    listener: Listener,
    api: Api,
    tls: Acceptor,
    plain_too: bool,
    stop: ClientStop,
) -> Result<(), MemberError> {
    let addr = listener.local_addr();
    let limit = api.max_request_bytes + 512 * 1024; // etcd's grpcOverheadBytes
    let kv = KvServer::new(api.clone()).max_decoding_message_size(limit);
    let cluster = ClusterServer::new(api.clone()).max_decoding_message_size(limit);
    let maint = MaintenanceServer::new(api.clone()).max_decoding_message_size(limit);
    let watch = WatchServer::new(api.watch_service()).max_decoding_message_size(limit);
    let lease = LeaseServer::new(crate::lease::LeaseService::new(api.clone()))
        .max_decoding_message_size(limit);
    let routes = tonic::service::Routes::new(kv)
        .add_service(cluster)
        .add_service(maint)
        .add_service(watch)
        .add_service(lease)
        .add_service(LockServer::new(crate::concurrency::Concurrency::new(
            api.clone(),
        )))
        .add_service(ElectionServer::new(crate::concurrency::Concurrency::new(
            api.clone(),
        )))
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            api.node.shared.metrics.clone(),
            crate::metrics::grpc_layer,
        ));
    let http2 = api.http2;
    let app = crate::http::routes(api.node.clone(), api.request_timeout, routes)
        .merge(crate::json_api::routes(&api))
        .merge(crate::v2_keys::routes(&api))
        .merge(crate::v2_members::routes(&api));
    // Our own accept loop rather than axum::serve: each connection's bytes go through
    // h2_authority::AuthorityFix, so `--endpoints=http://host:port` etcdctl requests
    // (`:authority: http://host:port`, which h2 resets) are served as etcd serves them.
    use hyper_util::service::TowerToHyperService;
    let mut stopping = stop.signal.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // The listener closes as this returns: new connections are refused.
            _ = stopping.wait_for(|s| *s) => return Ok(()),
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                ) {
                    // E.g. out of file descriptors: give connections time to close.
                    tracing::error!(addr = %addr, "accept error: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            match (tls, plain_too) {
                // etcd's cmux on a port with both schemes: a TLS ClientHello starts with a
                // handshake record (0x16); anything else is plaintext HTTP.
                (Some(acceptor), true) => {
                    let first = tokio::time::timeout(
                        TLS_HANDSHAKE_TIMEOUT,
                        crate::listener::Rewound::read_first(stream),
                    )
                    .await;
                    match first {
                        Ok(Ok(s)) if s.first() == Some(0x16) => {
                            serve_client_conn(s, peer, Some(acceptor), http2, service, stop).await
                        }
                        Ok(Ok(s)) => serve_client_conn(s, peer, None, http2, service, stop).await,
                        Ok(Err(e)) => tracing::trace!("client connection from {peer}: {e}"),
                        Err(_) => tracing::trace!("client connection from {peer}: idle"),
                    }
                }
                (tls, _) => serve_client_conn(stream, peer, tls, http2, service, stop).await,
            }
        });
    }
}

/// Serves one client connection: the TLS handshake first when `tls` is given, then HTTP/1.1
/// or HTTP/2 through [`crate::h2_authority::AuthorityFix`].
#[cfg(not(madsim))]
async fn serve_client_conn<S>(
    stream: S,
    peer: String,
    tls: Acceptor,
    http2: crate::api::Http2Settings,
    service: hyper_util::service::TowerToHyperService<axum::Router>,
    stop: ClientStop,
) where
    S: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + crate::tls::RemoteAddr
        + Unpin
        + Send
        + 'static,
{
    let Some(acceptor) = tls else {
        serve_until_stop(stream, &http2, service, stop).await;
        return;
    };
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        // Logged by the acceptor, in etcd's words.
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::warn!(
                "rejected connection from {peer} on the client port: TLS handshake timed out"
            );
            return;
        }
    };
    serve_until_stop(stream, &http2, service, stop).await;
}

/// Serves HTTP/1.1 or HTTP/2 on one client connection (through
/// [`crate::h2_authority::AuthorityFix`], its writes coalesced); when the member stops, asks
/// it to end gracefully (HTTP/2 GOAWAY: no new requests, those in flight answered; HTTP/1.1:
/// closed once idle).
#[cfg(not(madsim))]
async fn serve_until_stop<T>(
    stream: T,
    http2: &crate::api::Http2Settings,
    service: hyper_util::service::TowerToHyperService<axum::Router>,
    stop: ClientStop,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(crate::h2_authority::AuthorityFix::new(
        crate::coalesce::CoalescedWrites::new(stream),
    ));
    let builder = connection_builder(http2);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = stop.signal.clone();
    let res = tokio::select! {
        res = conn.as_mut() => res,
        // (The guard wait_for returns is dropped before the await below.)
        _ = async { drop(stopping.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::trace!("client connection: {e}");
    }
}

/// The client side of a graceful stop: `signal` turns true when the member stops, and every
/// client listener and connection holds `alive` until it has ended, so the stop can wait for
/// them (`ClientStop::new`'s receiver yields `None` once all have).
#[derive(Clone)]
struct ClientStop {
    signal: tokio::sync::watch::Receiver<bool>,
    signal_tx: Arc<tokio::sync::watch::Sender<bool>>,
    /// Held, never sent on: its drop is the message.
    _alive: mpsc::Sender<()>,
}

impl ClientStop {
    fn new() -> (ClientStop, mpsc::Receiver<()>) {
        let (signal_tx, signal) = tokio::sync::watch::channel(false);
        let (alive, gone) = mpsc::channel(1);
        let stop = ClientStop {
            signal,
            signal_tx: Arc::new(signal_tx),
            _alive: alive,
        };
        (stop, gone)
    }

    /// What stops them (kept by the member's stop path; holding it keeps nothing alive).
    fn signal_sender(&self) -> Arc<tokio::sync::watch::Sender<bool>> {
        self.signal_tx.clone()
    }
}

/// A client connection's HTTP/1.1-or-2 server with the member's HTTP/2 settings.
#[cfg(not(madsim))]
fn connection_builder(
    s: &crate::api::Http2Settings,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(s.max_concurrent_streams)
        .keep_alive_interval(s.keepalive_interval)
        .keep_alive_timeout(s.keepalive_timeout);
    b
}

#[cfg(madsim)]
async fn serve_client(
    addr: Listener,
    api: Api,
    _tls: Acceptor,
    _plain_too: bool,
    // The simulated member never gets a stop signal.
    _stop: ClientStop,
) -> Result<(), MemberError> {
    // etcd's HTTP endpoints with production's routes (http.rs) over simulated TCP; gRPC over
    // madsim-tonic on the same address (its own simulated protocol).
    let http = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| MemberError::Listen {
            addr: addr.to_string(),
            err: e.to_string(),
        })?;
    let app = crate::http::routes(api.node.clone(), api.request_timeout, axum::Router::new())
        .merge(crate::json_api::routes(&api))
        .merge(crate::v2_keys::routes(&api))
        .merge(crate::v2_members::routes(&api));
    tokio::spawn(serve_http_simulated(http, app));
    tonic::transport::Server::builder()
        .add_service(KvServer::new(api.clone()))
        .add_service(ClusterServer::new(api.clone()))
        .add_service(WatchServer::new(api.watch_service()))
        .add_service(LeaseServer::new(crate::lease::LeaseService::new(
            api.clone(),
        )))
        .add_service(LockServer::new(crate::concurrency::Concurrency::new(
            api.clone(),
        )))
        .add_service(ElectionServer::new(crate::concurrency::Concurrency::new(
            api.clone(),
        )))
        .add_service(MaintenanceServer::new(api))
        .serve(addr)
        .await
        .map_err(|e| MemberError::Listen {
            addr: addr.to_string(),
            err: e.to_string(),
        })
}

/// `--listen-metrics-urls`: HTTP/1.1 and HTTP/2 (plaintext or TLS) serving only `app`.
#[cfg(not(madsim))]
async fn serve_http(
    listener: Listener,
    app: axum::Router,
    tls: Acceptor,
) -> Result<(), MemberError> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!("metrics listener accept error: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let res = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => builder.serve_connection(TokioIo::new(s), service).await,
                        // Logged by the acceptor, in etcd's words.
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::warn!("rejected connection from {peer} on the metrics port: TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = res {
                tracing::trace!("metrics connection: {e}");
            }
        });
    }
}

/// Under madsim: HTTP/1.1 on simulated TCP (the simulated node speaks plaintext).
#[cfg(madsim)]
async fn serve_http(addr: Listener, app: axum::Router, _tls: Acceptor) -> Result<(), MemberError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| MemberError::Listen {
            addr: addr.to_string(),
            err: e.to_string(),
        })?;
    serve_http_simulated(listener, app).await;
    Ok(())
}

/// HTTP/1.1 on madsim's TCP (hyper needs no executor for it).
#[cfg(madsim)]
async fn serve_http_simulated(listener: tokio::net::TcpListener, app: axum::Router) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    while let Ok((stream, _)) = listener.accept().await {
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::trace!("client connection: {e}");
            }
        });
    }
}
