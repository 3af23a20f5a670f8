//! The peer transport: raft messages between members over gRPC on the peer URLs.
//!
//! Outbound, one task per peer owns a bounded queue and one client stream, sending whatever
//! has queued as one batch. Every connection opens with a handshake that carries both
//! members' cluster and member IDs; a member of another cluster is refused (and, while this
//! member is still bootstrapping, is fatal: the guide's "conflicting cluster ID" exit).
//! Inbound, every batch is checked again before its messages reach raft.

use crate::node::{MemberChanges, NodeInputs, Shared};
use crate::proto::detcdpb::peer_client::PeerClient;
use crate::proto::detcdpb::peer_server::Peer;
use crate::snapshot_files::{self, SnapshotFiles};
use detcd_core::bootstrap::{BootstrapError, RemoteCluster};
use detcd_core::ids::format_id;
use detcd_core::membership::MemberChange;
use detcd_core::peer;
use detcd_core::proto::detcdpb::{
    member_change_request, HandshakeRequest, HandshakeResponse, LeaseAnswer, LeaseForwardRequest,
    MemberChangeRequest, MemberChangeResponse, MembersRequest, MembersResponse, MessageBatch,
    SnapshotChunk, SnapshotReceived, StreamSummary,
};
use detcd_core::state::snapshot::FileCheck;
use raft::prelude::{Message, MessageType};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// Peer streams this process has opened (the simulator checks that a healthy cluster keeps
/// its streams instead of reopening them).
pub static PEER_STREAMS_OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Messages queued per peer before new ones are dropped (raft retransmits).
const PEER_QUEUE: usize = 4096;
/// Messages folded into one batch at most.
const MAX_BATCH_MESSAGES: usize = 256;
/// A raft message carries entries of up to `--max-request-bytes` each (snapshots travel in
/// 1 MiB chunks on Peer.Snapshot); the cap on one decoded peer message.
pub const MAX_PEER_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
/// A snapshot transfer whose next chunk does not come within this long is abandoned (a leader
/// that vanished without closing the connection).
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
// A dead peer connection is found by HTTP/2 pings (etcd: a 5 s read timeout on its peer
// streams). Not a per-request timeout on the channel: that would also end the long-lived
// stream (it did, every 5 s, and replication paused ~100 ms while the sender reconnected).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How `https://` peers are dialed (the TLS decisions are detcd-core's `tls::plan`). Under
/// madsim the simulated node speaks plaintext and this carries nothing.
#[derive(Clone, Default)]
pub struct PeerDialTls {
    #[cfg(not(madsim))]
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// The files `config` reloads, refreshed before each handshake.
    #[cfg(not(madsim))]
    pub files: crate::tls::TlsFiles,
    /// Resolves peer host names before dialing (DNS SRV discovery and
    /// `--discovery-srv-resolver`: names the system resolver may not know); `None`: the
    /// system resolver resolves them while connecting.
    pub dns: Option<crate::dns::SharedDns>,
    /// The name every peer's certificate must carry instead of its host (the SRV domain,
    /// see detcd-core's `PeerVerify::SystemRoots`).
    pub server_name: Option<String>,
}

/// The address to dial for a peer URL's host when `tls.dns` resolves names (`None`: dial the
/// host as written). A name that does not resolve is an error.
async fn peer_dial_addr(host: &str, tls: &PeerDialTls) -> Result<Option<std::net::IpAddr>, String> {
    match &tls.dns {
        Some(dns) if host.parse::<std::net::IpAddr>().is_err() => {
            crate::dns::dial_addr(dns.as_ref(), host)
                .await
                .map(Some)
                .map_err(|e| e.message)
        }
        _ => Ok(None),
    }
}

/// Opens a channel to a peer URL: plaintext for `http://`, TLS for `https://`.
async fn open_channel(url: &str, tls: &PeerDialTls) -> Result<tonic::transport::Channel, String> {
    let parsed = detcd_core::config::Url::parse(url).map_err(|e| e.to_string())?;
    #[cfg(not(madsim))]
    if let Some(path) = parsed.unix_path() {
        let files = tls.files.clone();
        let tls = match parsed.scheme.is_tls() {
            true => Some(
                tls.config
                    .clone()
                    .ok_or_else(|| format!("no peer TLS configured to dial {url}"))?,
            ),
            false => None,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", parsed.host))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let connector = UnixDial {
            path,
            host: parsed.host,
            tls,
            files,
        };
        return endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| error_chain(&e));
    }
    let addr = peer_dial_addr(&parsed.host, tls).await?;
    #[cfg(not(madsim))]
    if url.len() > 8 && url[..8].eq_ignore_ascii_case("https://") {
        let config = tls
            .config
            .clone()
            .ok_or_else(|| format!("no peer TLS configured to dial {url}"))?;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", &url[8..]))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let connector = TlsDial {
            config,
            host: parsed.host,
            port: parsed.port,
            addr,
            server_name: tls.server_name.clone(),
            peer: true,
            files: tls.files.clone(),
        };
        return endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| error_chain(&e));
    }
    // The simulated node speaks plaintext whatever the scheme.
    #[cfg(madsim)]
    let url = match url.get(..8) {
        Some(p) if p.eq_ignore_ascii_case("https://") => format!("http://{}", &url[8..]),
        _ => url.to_string(),
    };
    // A name resolved through `tls.dns`: dial its address.
    let url = match addr {
        Some(ip) => format!("http://{}", std::net::SocketAddr::new(ip, parsed.port)),
        None => url.to_string(),
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    endpoint.connect().await.map_err(|e| error_chain(&e))
}

/// Go's crypto/tls text for a TLS alert (alert.go), from rustls's name for it: etcd logs a
/// refused handshake as `remote error: tls: <this>`, and tools look for it.
pub(crate) fn go_alert_text(rustls_name: &str) -> String {
    match rustls_name {
        "BadCertificate" => "bad certificate",
        "HandshakeFailure" => "handshake failure",
        "UnknownCA" => "unknown certificate authority",
        "CertificateExpired" => "expired certificate",
        "CertificateRevoked" => "revoked certificate",
        "CertificateUnknown" => "unknown certificate",
        "UnsupportedCertificate" => "unsupported certificate",
        "AccessDenied" => "access denied",
        "DecryptError" => "error decrypting message",
        "ProtocolVersion" => "protocol version not supported",
        "InternalError" => "internal error",
        "CertificateRequired" => "certificate required",
        other => return format!("alert {other}"),
    }
    .to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// tonic's connector for TLS peers (and etcd v3 discovery endpoints): TCP, then the TLS
/// handshake with the given configuration.
#[cfg(not(madsim))]
#[derive(Clone)]
pub(crate) struct TlsDial {
    config: Arc<rustls::ClientConfig>,
    host: String,
    port: u16,
    /// `host` resolved already (see [`PeerDialTls::dns`]).
    addr: Option<std::net::IpAddr>,
    /// See [`PeerDialTls::server_name`].
    server_name: Option<String>,
    /// A peer: handshake failures are logged here (a discovery endpoint's reach its caller).
    peer: bool,
    /// Refreshed before each handshake (see [`PeerDialTls::files`]).
    files: crate::tls::TlsFiles,
}

#[cfg(not(madsim))]
impl TlsDial {
    /// A connector to `host:port` verified as `host` (an etcd v3 discovery endpoint).
    pub(crate) fn endpoint(config: Arc<rustls::ClientConfig>, host: String, port: u16) -> TlsDial {
        TlsDial {
            config,
            host,
            port,
            addr: None,
            server_name: None,
            peer: false,
            files: Default::default(),
        }
    }
}

#[cfg(not(madsim))]
impl tower_service::Service<tonic::codegen::http::Uri> for TlsDial {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.files.refresh().await;
            let connected = crate::tls::connect_named(
                this.config,
                &this.host,
                this.port,
                this.addr,
                this.server_name.as_deref(),
            )
            .await;
            match connected {
                Ok(s) => Ok(hyper_util::rt::TokioIo::new(s)),
                Err(e) => {
                    if this.peer && e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                        match &this.server_name {
                            // The guide's DNS SRV note: the domain must be in the SAN.
                            Some(domain) => tracing::warn!(
                                "TLS handshake with peer https://{}:{} failed: {e}; with --discovery-srv \
                                 and no --peer-trusted-ca-file every peer certificate must carry the SRV \
                                 domain {domain:?} in its Subject Alternative Names (ServerName {domain:?})",
                                this.host,
                                this.port
                            ),
                            None => tracing::warn!(
                                "TLS handshake with peer https://{}:{} failed: {e}",
                                this.host,
                                this.port
                            ),
                        }
                    }
                    Err(e)
                }
            }
        })
    }
}

/// tonic's connector for `unix://` and `unixs://` peers (etcd's `unixTransport`): the socket
/// file named by the URL's `host:port`, then TLS verified as `host` for `unixs`.
#[cfg(not(madsim))]
#[derive(Clone)]
struct UnixDial {
    path: String,
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    files: crate::tls::TlsFiles,
}

/// A dialed connection of any kind, as hyper takes it.
#[cfg(not(madsim))]
trait DialedIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
#[cfg(not(madsim))]
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> DialedIo for T {}

#[cfg(not(madsim))]
impl tower_service::Service<tonic::codegen::http::Uri> for UnixDial {
    type Response = hyper_util::rt::TokioIo<Box<dyn DialedIo>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(&this.path).await?;
            let Some(config) = this.tls else {
                return Ok(hyper_util::rt::TokioIo::new(
                    Box::new(stream) as Box<dyn DialedIo>
                ));
            };
            let name = rustls::pki_types::ServerName::try_from(this.host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            this.files.refresh().await;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(
                Box::new(tls) as Box<dyn DialedIo>
            ))
        })
    }
}

/// What the transport tells the raft driver. The channel is unbounded so a snapshot report is
/// never lost (raft waits for it forever otherwise); every event answers something the driver
/// sent or a reconnect attempt (at most a few per second per peer), so it stays short.
#[derive(Debug)]
pub enum PeerEvent {
    Unreachable(u64),
    /// A MsgSnapshot to the peer was stored there (true) or failed (false): one per message.
    Snapshot(u64, bool),
    /// The snapshot file of this index could not be read, or the peer found it damaged: raft
    /// must not offer that snapshot again.
    SnapshotFileUnusable(u64),
    /// The stream to the peer came up (true) or broke (false), as seen by the sender task
    /// with this number ([`Transport::is_current`]).
    Active(u64, u64, bool),
    /// A peer answered that this member was removed from the cluster: it must stop.
    Removed,
    Fatal(String),
}

/// What the peers say to a member of their cluster that was removed (etcd's rafthttp text).
pub const REMOVED_MEMBER: &str = "the member has been permanently removed from the cluster";

/// Outbound side: routes raft messages to per-peer queues. The peer set follows the applied
/// member list ([`Transport::set_peers`]).
pub struct Transport {
    peers: Mutex<BTreeMap<u64, PeerQueue>>,
    next_sender: std::sync::atomic::AtomicU64,
    events: mpsc::UnboundedSender<PeerEvent>,
    /// What a new peer's sender task needs (None in unit tests, which start no tasks).
    spawn: Option<PeerSpawn>,
}

/// One peer's queue; dropping it ends the peer's sender task.
struct PeerQueue {
    urls: Vec<String>,
    queue: mpsc::Sender<Message>,
    /// The number of the sender task serving it (each new one gets the next).
    sender: u64,
}

#[derive(Clone)]
struct PeerSpawn {
    member_id: u64,
    cluster_id: u64,
    shared: Arc<OnceLock<Arc<Shared>>>,
    tls: PeerDialTls,
    snapshot_files: Arc<dyn SnapshotFiles>,
}

impl Transport {
    /// A transport with no peers (unit tests of what hands it messages).
    #[cfg(test)]
    pub(crate) fn without_peers() -> Transport {
        Transport {
            peers: Mutex::new(BTreeMap::new()),
            next_sender: std::sync::atomic::AtomicU64::new(1),
            events: mpsc::unbounded_channel().0,
            spawn: None,
        }
    }

    /// Starts one sender task per peer. `shared` is set once the node exists (the tasks need
    /// the cluster ID and whether this member has joined yet).
    pub fn start(
        member_id: u64,
        cluster_id: u64,
        peers: &[(u64, Vec<String>)],
        shared: Arc<OnceLock<Arc<Shared>>>,
        events: mpsc::UnboundedSender<PeerEvent>,
        tls: PeerDialTls,
        snapshot_files: Arc<dyn SnapshotFiles>,
    ) -> Transport {
        let t = Transport {
            peers: Mutex::new(BTreeMap::new()),
            next_sender: std::sync::atomic::AtomicU64::new(1),
            events,
            spawn: Some(PeerSpawn {
                member_id,
                cluster_id,
                shared,
                tls,
                snapshot_files,
            }),
        };
        t.set_peers(peers);
        t
    }

    /// Makes the peer set exactly `peers` (ID, peer URLs; this member's own entry is
    /// skipped): senders of removed members stop, new members get one, and a member whose
    /// URLs changed is redialed at the new ones.
    pub fn set_peers(&self, peers: &[(u64, Vec<String>)]) {
        let Some(spawn) = &self.spawn else { return };
        let mut map = self.peers.lock().unwrap();
        map.retain(|id, q| peers.iter().any(|(p, urls)| p == id && *urls == q.urls));
        for (id, urls) in peers {
            if *id == spawn.member_id || map.contains_key(id) || urls.is_empty() {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let number = self.next_sender.fetch_add(1, Ordering::Relaxed);
            map.insert(
                *id,
                PeerQueue {
                    urls: urls.clone(),
                    queue: tx,
                    sender: number,
                },
            );
            let sender = PeerSender {
                number,
                member_id: spawn.member_id,
                cluster_id: spawn.cluster_id,
                peer_id: *id,
                urls: urls.clone(),
                queue: rx,
                events: self.events.clone(),
                shared: spawn.shared.clone(),
                tls: spawn.tls.clone(),
                snapshot_files: spawn.snapshot_files.clone(),
                snapshot_send: None,
                active: false,
            };
            tokio::spawn(sender.run());
        }
    }

    /// Whether sender task `sender` still serves peer `id` (its reports are current).
    pub fn is_current(&self, id: u64, sender: u64) -> bool {
        self.peers
            .lock()
            .unwrap()
            .get(&id)
            .is_some_and(|q| q.sender == sender)
    }

    /// Whether the transport has a sender for member `id` (it is in the member list).
    pub fn has_peer(&self, id: u64) -> bool {
        self.peers.lock().unwrap().contains_key(&id)
    }

    /// Queues messages for their peers. A full queue means the peer is slow or gone: raft
    /// resends what matters, but a snapshot it must be told about, or it waits for that
    /// snapshot forever (the follower stays in snapshot state).
    pub fn send(&self, msgs: Vec<Message>) {
        let map = self.peers.lock().unwrap();
        for m in msgs {
            let (to, is_snapshot) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            let queued = match map.get(&to) {
                Some(q) => q.queue.try_send(m).is_ok(),
                None => false,
            };
            if !queued && is_snapshot {
                self.report_snapshot_lost(to);
            }
        }
    }

    fn report_snapshot_lost(&self, to: u64) {
        tracing::warn!(peer = %format_id(to), "snapshot could not be queued for the peer; reported to raft as failed");
        let _ = self.events.send(PeerEvent::Snapshot(to, false));
    }
}

struct PeerSender {
    /// This task's number (see [`PeerEvent::Active`]).
    number: u64,
    member_id: u64,
    cluster_id: u64,
    peer_id: u64,
    urls: Vec<String>,
    queue: mpsc::Receiver<Message>,
    events: mpsc::UnboundedSender<PeerEvent>,
    shared: Arc<OnceLock<Arc<Shared>>>,
    tls: PeerDialTls,
    snapshot_files: Arc<dyn SnapshotFiles>,
    /// The snapshot being sent to this peer, if any.
    snapshot_send: Option<tokio::task::JoinHandle<()>>,
    /// The stream to the peer is up (reported to the driver on every change).
    active: bool,
}

enum Connect {
    Ready(PeerClient<tonic::transport::Channel>),
    Failed,
    Stop,
}

impl PeerSender {
    async fn run(mut self) {
        self.serve().await;
        // A snapshot still streaming to a peer that left the member list is abandoned.
        if let Some(send) = self.snapshot_send.take() {
            send.abort();
        }
    }

    async fn serve(&mut self) {
        let mut backoff = RETRY_MIN;
        let mut url_index = 0usize;
        loop {
            // The peer left the member list (or the member stopped): this task ends.
            if self.queue.is_closed() {
                self.set_active(false);
                return;
            }
            let url = self.urls[url_index % self.urls.len()].clone();
            url_index += 1;
            match self.connect(&url).await {
                Connect::Stop => return,
                Connect::Failed => {
                    self.set_active(false);
                    self.drop_queued();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
                Connect::Ready(client) => {
                    backoff = RETRY_MIN;
                    self.set_active(true);
                    let done = self.stream(client).await;
                    self.set_active(false);
                    if done {
                        return;
                    }
                    self.drop_queued();
                    tokio::time::sleep(RETRY_MIN).await;
                }
            }
        }
    }

    fn set_active(&mut self, active: bool) {
        if self.active != active {
            self.active = active;
            let _ = self
                .events
                .send(PeerEvent::Active(self.peer_id, self.number, active));
        }
    }

    /// Messages queued while the peer is unreachable are stale by the time it is back.
    fn drop_queued(&mut self) {
        let mut dropped = false;
        while let Ok(m) = self.queue.try_recv() {
            dropped = true;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let _ = self.events.send(PeerEvent::Snapshot(self.peer_id, false));
            }
        }
        if dropped {
            let _ = self.events.send(PeerEvent::Unreachable(self.peer_id));
        }
    }

    async fn connect(&mut self, url: &str) -> Connect {
        let channel = match open_channel(url, &self.tls).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = %format_id(self.peer_id), "connect {url}: {e}");
                return Connect::Failed;
            }
        };
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let hs = HandshakeRequest {
            cluster_id: self.cluster_id,
            from: self.member_id,
            to: self.peer_id,
        };
        let resp = match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.handshake(hs)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => {
                let why = error_chain(&e);
                // A peer that refused our certificate closes the connection with a TLS alert.
                if let Some(alert) = why.split("received fatal alert: ").nth(1) {
                    let alert = alert.split([' ', ')', '"']).next().unwrap_or(alert);
                    tracing::warn!(
                        peer = %format_id(self.peer_id),
                        "peer {url} refused this member's TLS certificate (remote error: tls: {}): is \
                         --peer-cert-file signed by a CA in the other members' --peer-trusted-ca-file \
                         (and, with --peer-cert-allowed-cn, issued to that CN)?",
                        go_alert_text(alert)
                    );
                } else if why.contains("certificate") {
                    tracing::warn!(peer = %format_id(self.peer_id), "handshake with {url} failed: {why}");
                } else {
                    tracing::debug!(peer = %format_id(self.peer_id), "handshake with {url}: {why}");
                }
                return Connect::Failed;
            }
            Err(_) => return Connect::Failed,
        };
        if resp.cluster_id != self.cluster_id
            && !crate::mutation::active("skip-peer-cluster-id-check")
        {
            let joined = self.shared.get().map(|s| s.joined()).unwrap_or(false);
            let err = BootstrapError::ConflictingClusterId {
                local: self.cluster_id,
                peer: resp.cluster_id,
            };
            if !joined {
                let _ = self.events.send(PeerEvent::Fatal(err.to_string()));
                return Connect::Stop;
            }
            tracing::error!(
                peer = %format_id(self.peer_id),
                "request sent was ignored (cluster ID mismatch: peer[{}]={}, local={})",
                format_id(resp.member_id),
                format_id(resp.cluster_id),
                format_id(self.cluster_id)
            );
            tokio::time::sleep(RETRY_MAX).await;
            return Connect::Failed;
        }
        if resp.removed {
            tracing::error!(peer = %format_id(self.peer_id), "{REMOVED_MEMBER}");
            let _ = self.events.send(PeerEvent::Removed);
            return Connect::Stop;
        }
        if !resp.refused.is_empty() {
            tracing::warn!(peer = %format_id(self.peer_id), "peer {url} refused us: {}", resp.refused);
            tokio::time::sleep(RETRY_MAX).await;
            return Connect::Failed;
        }
        Connect::Ready(client)
    }

    /// Streams batches until the connection breaks (false) or the node is gone (true).
    async fn stream(&mut self, mut client: PeerClient<tonic::transport::Channel>) -> bool {
        let (btx, mut brx) = mpsc::channel::<MessageBatch>(16);
        let outbound = async_stream::stream! {
            while let Some(b) = brx.recv().await {
                yield b;
            }
        };
        // Snapshots go on calls of their own, over the same connection.
        let snapshot_client = client.clone();
        let call = client.stream(outbound);
        tokio::pin!(call);
        PEER_STREAMS_OPENED.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::select! {
                biased;
                res = &mut call => {
                    if let Err(e) = res {
                        tracing::debug!(peer = %format_id(self.peer_id), "peer stream ended: {e}");
                    }
                    return false;
                }
                m = self.queue.recv() => {
                    let Some(first) = m else { return true };
                    let mut batch = MessageBatch {
                        cluster_id: self.cluster_id,
                        from: self.member_id,
                        messages: Vec::new(),
                    };
                    let mut next = Some(first);
                    while let Some(m) = next.take() {
                        if m.get_msg_type() == MessageType::MsgSnapshot {
                            self.start_snapshot(snapshot_client.clone(), m);
                        } else {
                            let mut b = Vec::new();
                            detcd_core::raftpb::encode_message(&m, &mut b);
                            batch.messages.push(b);
                        }
                        if batch.messages.len() < MAX_BATCH_MESSAGES {
                            next = self.queue.try_recv().ok();
                        }
                    }
                    let bytes: usize = batch.messages.iter().map(Vec::len).sum();
                    if !batch.messages.is_empty() && btx.send(batch).await.is_err() {
                        return false;
                    }
                    if let Some(shared) = self.shared.get() {
                        shared.metrics.peer_sent(self.peer_id, bytes);
                    }
                }
            }
        }
    }

    /// Sends a MsgSnapshot and its file on a call of their own (the message stream keeps
    /// flowing meanwhile) and reports the outcome to raft when the peer has stored it.
    fn start_snapshot(&mut self, client: PeerClient<tonic::transport::Channel>, m: Message) {
        // raft sends a peer one snapshot at a time and sends another only after it forgot the
        // first (a new term): that one is abandoned unreported, raft no longer waits for it.
        if let Some(old) = self.snapshot_send.take() {
            if !old.is_finished() {
                tracing::info!(peer = %format_id(self.peer_id), "abandoning the snapshot in flight for a newer one");
                old.abort();
            }
        }
        let (to, events) = (self.peer_id, self.events.clone());
        let (cluster_id, from) = (self.cluster_id, self.member_id);
        let files = self.snapshot_files.clone();
        let shared = self.shared.clone();
        self.snapshot_send = Some(tokio::spawn(async move {
            let index = m.get_snapshot().get_metadata().index;
            let res = send_snapshot(client, files, m, cluster_id, from).await;
            match &res {
                Ok(bytes) => {
                    tracing::info!(peer = %format_id(to), index, bytes, "sent snapshot");
                    if let Some(shared) = shared.get() {
                        shared.metrics.peer_sent(to, *bytes as usize);
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = %format_id(to), index, "sending snapshot failed: {}", e.why)
                }
            }
            if matches!(&res, Err(e) if e.file_unusable) {
                let _ = events.send(PeerEvent::SnapshotFileUnusable(index));
            }
            let _ = events.send(PeerEvent::Snapshot(to, res.is_ok()));
        }));
    }
}

/// Why a snapshot send failed; `file_unusable` when the fault is this member's file (it could
/// not be read, or the peer found it not matching its reference), not the network or the peer.
struct SnapshotSendError {
    why: String,
    file_unusable: bool,
}

/// The Peer.Snapshot call: the message first, then the file in chunks, read off the async
/// workers at the pace the connection takes them (HTTP/2 flow control). Returns the bytes
/// the peer stored.
async fn send_snapshot(
    mut client: PeerClient<tonic::transport::Channel>,
    files: Arc<dyn SnapshotFiles>,
    m: Message,
    cluster_id: u64,
    from: u64,
) -> Result<u64, SnapshotSendError> {
    let index = m.get_snapshot().get_metadata().index;
    let mut message = Vec::new();
    detcd_core::raftpb::encode_message(&m, &mut message);
    let mut chunks = snapshot_files::read_chunks(files, index);
    let (read_err_tx, read_err) = tokio::sync::oneshot::channel::<String>();
    let outbound = async_stream::stream! {
        yield SnapshotChunk { cluster_id, from, message, data: Vec::new() };
        let mut read_err_tx = Some(read_err_tx);
        while let Some(chunk) = chunks.recv().await {
            match chunk {
                Ok(data) => yield SnapshotChunk { data, ..Default::default() },
                Err(e) => {
                    // Ends the call short: the peer refuses the incomplete file.
                    if let Some(tx) = read_err_tx.take() {
                        let _ = tx.send(format!("reading snapshot file {index}: {e}"));
                    }
                    return;
                }
            }
        }
    };
    let res = client.snapshot(outbound).await;
    if let Ok(why) = read_err.await {
        return Err(SnapshotSendError {
            why,
            file_unusable: true,
        });
    }
    res.map(|r| r.into_inner().bytes)
        .map_err(|e| SnapshotSendError {
            file_unusable: e.code() == tonic::Code::DataLoss,
            why: error_chain(&e),
        })
}

/// Inbound side: the gRPC service on the peer URLs.
pub struct PeerService {
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    snapshot_files: Arc<dyn SnapshotFiles>,
    member_changes: MemberChanges,
    /// How long a forwarded membership change may take.
    request_timeout: Duration,
}

impl PeerService {
    pub fn new(
        shared: Arc<Shared>,
        inputs: &NodeInputs,
        snapshot_files: Arc<dyn SnapshotFiles>,
        request_timeout: Duration,
    ) -> PeerService {
        PeerService {
            shared,
            inbound: inputs.inbound.clone(),
            snapshot_files,
            member_changes: inputs.member_changes.clone(),
            request_timeout,
        }
    }

    fn is_member(&self, id: u64) -> bool {
        self.shared.members.read().unwrap().contains(id)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn handshake(
        &self,
        req: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeResponse>, Status> {
        let req = req.into_inner();
        let removed = req.cluster_id == self.shared.cluster_id
            && self.shared.members.read().unwrap().is_removed(req.from);
        if removed {
            tracing::warn!(from = %format_id(req.from), "refused a removed member");
            return Ok(Response::new(HandshakeResponse {
                cluster_id: self.shared.cluster_id,
                member_id: self.shared.member_id,
                refused: REMOVED_MEMBER.into(),
                removed: true,
            }));
        }
        let mut refused =
            peer::check_sender(req.cluster_id, req.from, self.shared.cluster_id, |id| {
                self.is_member(id)
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        if refused.is_empty() && req.to != self.shared.member_id {
            refused = format!(
                "this is member {}, not {}",
                format_id(self.shared.member_id),
                format_id(req.to)
            );
        }
        if !refused.is_empty() {
            tracing::warn!(from = %format_id(req.from), "refused peer: {refused}");
        }
        Ok(Response::new(HandshakeResponse {
            cluster_id: self.shared.cluster_id,
            member_id: self.shared.member_id,
            refused,
            removed: false,
        }))
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let m = self.shared.members.read().unwrap();
        Ok(Response::new(MembersResponse {
            cluster_id: self.shared.cluster_id,
            member_id: self.shared.member_id,
            members: m.members().cloned().collect(),
            removed: m.removed().collect(),
        }))
    }

    /// A lease call a follower's client made that only the leader can answer.
    async fn lease_forward(
        &self,
        req: Request<LeaseForwardRequest>,
    ) -> Result<Response<LeaseAnswer>, Status> {
        let req = req.into_inner();
        peer::check_sender(req.cluster_id, req.from, self.shared.cluster_id, |id| {
            self.is_member(id)
        })
        .map_err(|e| Status::permission_denied(e.to_string()))?;
        let call = req
            .call
            .ok_or_else(|| Status::invalid_argument("no lease call given"))?;
        Ok(Response::new(
            crate::lease::answer_on_leader(&self.shared, call).await,
        ))
    }

    /// A membership change a follower's client asked for: the leader checks and proposes it,
    /// and answers with the index it applied at.
    async fn member_change(
        &self,
        req: Request<MemberChangeRequest>,
    ) -> Result<Response<MemberChangeResponse>, Status> {
        let req = req.into_inner();
        peer::check_sender(req.cluster_id, req.from, self.shared.cluster_id, |id| {
            self.is_member(id)
        })
        .map_err(|e| Status::permission_denied(e.to_string()))?;
        let change = match req.change {
            Some(member_change_request::Change::Add(m)) => MemberChange::Add(m),
            Some(member_change_request::Change::Remove(id)) => MemberChange::Remove(id),
            Some(member_change_request::Change::Update(u)) => MemberChange::Update(u),
            Some(member_change_request::Change::Promote(id)) => MemberChange::Promote(id),
            None => return Err(Status::invalid_argument("no membership change given")),
        };
        let res = self
            .member_changes
            .change(change, req.strict, self.request_timeout)
            .await;
        let mut resp = MemberChangeResponse::default();
        match res {
            Ok(index) => resp.index = index,
            Err(e) => {
                let status = Status::from(e);
                resp.error = status.message().to_string();
                resp.grpc_code = status.code() as i32;
            }
        }
        Ok(Response::new(resp))
    }

    async fn stream(
        &self,
        req: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<StreamSummary>, Status> {
        let mut stream = req.into_inner();
        let mut received = 0u64;
        while let Some(batch) = stream.message().await? {
            let msgs = peer::open_batch(
                &batch,
                self.shared.cluster_id,
                self.shared.member_id,
                |id| self.is_member(id),
            )
            .map_err(|e| {
                tracing::warn!(from = %format_id(batch.from), "refused peer batch: {e}");
                Status::permission_denied(e.to_string())
            })?;
            self.shared
                .metrics
                .peer_received(batch.from, batch.messages.iter().map(Vec::len).sum());
            for m in msgs {
                if self.inbound.send(m).await.is_err() {
                    return Err(Status::unavailable("member stopped"));
                }
                received += 1;
            }
        }
        Ok(Response::new(StreamSummary { received }))
    }

    /// A snapshot from the leader: its file is stored (checked against the reference in the
    /// message, synced) before raft sees the message, so installing never waits on the
    /// network and never reads a partial file.
    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotReceived>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot call"))?;
        let (msg, file_ref) = peer::open_snapshot(
            &first,
            self.shared.cluster_id,
            self.shared.member_id,
            |id| self.is_member(id),
        )
        .map_err(|e| {
            tracing::warn!(from = %format_id(first.from), "refused snapshot: {e}");
            Status::permission_denied(e.to_string())
        })?;
        let from = first.from;
        let bytes = store_snapshot_file(
            &msg,
            &file_ref,
            first.data,
            &mut stream,
            self.snapshot_files.clone(),
            SNAPSHOT_CHUNK_TIMEOUT,
        )
        .await
        .inspect_err(
            |e| tracing::warn!(from = %format_id(from), "refused snapshot file: {}", e.message()),
        )?;
        let index = msg.get_snapshot().get_metadata().index;
        tracing::info!(from = %format_id(from), index, bytes, "received snapshot");
        self.shared.metrics.peer_received(from, bytes as usize);
        self.inbound
            .send(msg)
            .await
            .map_err(|_| Status::unavailable("member stopped"))?;
        Ok(Response::new(SnapshotReceived { bytes }))
    }
}

/// Where a snapshot's chunks come from (the gRPC stream; a channel in tests).
pub trait ChunkSource {
    fn next_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<SnapshotChunk>, Status>> + Send;
}

impl ChunkSource for Streaming<SnapshotChunk> {
    async fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>, Status> {
        self.message().await
    }
}

/// Stores the snapshot file a MsgSnapshot names: `first_data` and every chunk that follows,
/// written off the async workers, checked against `file_ref` (size and CRC-32C), synced.
/// Returns the bytes stored. Refuses, leaving nothing behind, a file longer or other than
/// its reference (DataLoss: the sender's file is at fault), a transfer whose next chunk
/// does not come within `idle` (DeadlineExceeded), and a disk that fails (Internal).
pub async fn store_snapshot_file(
    msg: &Message,
    file_ref: &detcd_core::proto::detcdpb::SnapshotRef,
    first_data: Vec<u8>,
    stream: &mut impl ChunkSource,
    files: Arc<dyn SnapshotFiles>,
    idle: Duration,
) -> Result<u64, Status> {
    let index = msg.get_snapshot().get_metadata().index;
    let (file, stored) = snapshot_files::write_chunks(files, index);
    let mut check = FileCheck::default();
    let mut data = first_data;
    loop {
        if !data.is_empty() {
            check.update(&data);
            if check.size > file_ref.size {
                return Err(Status::data_loss(format!(
                    "snapshot file {index} is longer than its reference ({} bytes)",
                    file_ref.size
                )));
            }
            if file.send(Some(data)).await.is_err() {
                break; // the writer failed: `stored` says why
            }
        }
        match tokio::time::timeout(idle, stream.next_chunk()).await {
            Ok(Ok(Some(chunk))) => data = chunk.data,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no chunk of snapshot file {index} for {idle:?}"
                )))
            }
        }
    }
    let complete = check.matches(file_ref);
    if complete {
        let _ = file.send(None).await;
    }
    drop(file);
    match stored.await {
        Ok(Ok(())) => Ok(check.size),
        // Short or different bytes: the writer was told to discard them.
        Ok(Err(e)) if !complete && e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Status::data_loss(format!(
                "snapshot file {index} does not match its reference: got {} bytes (crc32c {:08x}), its reference says {} (crc32c {:08x})",
                check.size, check.crc32c, file_ref.size, file_ref.crc32c
            )))
        }
        Ok(Err(e)) => {
            tracing::error!(index, "storing snapshot file failed: {e}");
            Err(Status::internal(format!("storing snapshot file {index}: {e}")))
        }
        Err(_) => Err(Status::internal("the snapshot file writer stopped")),
    }
}

/// Asks every given peer URL for its cluster's member list (the peer Members call), at most
/// `CONNECT_TIMEOUT` each, all at once. Peers that do not answer are left out: in a new
/// cluster they are starting too. The answers decide a new member's start
/// (`bootstrap::check_new_member`) or a join (`bootstrap::plan_join`).
pub async fn fetch_remote_clusters(urls: &[String], tls: &PeerDialTls) -> Vec<RemoteCluster> {
    let asks = urls.iter().map(|url| async move {
        let ch = tokio::time::timeout(CONNECT_TIMEOUT, open_channel(url, tls))
            .await
            .ok()?
            .ok()?;
        let mut c = PeerClient::new(ch);
        let r = tokio::time::timeout(CONNECT_TIMEOUT * 2, c.members(MembersRequest {}))
            .await
            .ok()?
            .ok()?
            .into_inner();
        Some(RemoteCluster {
            cluster_id: r.cluster_id,
            members: r.members,
            removed: r.removed,
        })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A peer client for the first of `urls` that connects (each tried for `CONNECT_TIMEOUT`).
pub async fn peer_client(
    urls: &[String],
    tls: &PeerDialTls,
) -> Result<PeerClient<tonic::transport::Channel>, String> {
    let mut last = String::from("the member has no peer URLs");
    for url in urls {
        match tokio::time::timeout(CONNECT_TIMEOUT, open_channel(url, tls)).await {
            Ok(Ok(ch)) => return Ok(PeerClient::new(ch)),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("connecting to {url} timed out"),
        }
    }
    Err(last)
}

/// Sends a membership change to the leader at `urls` (its peer URLs, tried in order) and
/// returns its answer.
pub async fn forward_member_change(
    urls: &[String],
    tls: &PeerDialTls,
    req: MemberChangeRequest,
    timeout: Duration,
) -> Result<MemberChangeResponse, String> {
    let mut last = String::from("the leader has no peer URLs");
    for url in urls {
        let ch = match tokio::time::timeout(CONNECT_TIMEOUT, open_channel(url, tls)).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => {
                last = e;
                continue;
            }
            Err(_) => {
                last = format!("connecting to {url} timed out");
                continue;
            }
        };
        let mut c = PeerClient::new(ch);
        return match tokio::time::timeout(timeout, c.member_change(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("the leader at {url} did not answer in time")),
        };
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn msg(to: u64, ty: MessageType) -> Message {
        let mut m = Message::default();
        m.to = to;
        m.set_msg_type(ty);
        m
    }

    /// Regression: a snapshot the transport could not queue was dropped silently, and raft
    /// kept the follower waiting for it forever (it stays in snapshot state).
    #[tokio::test]
    async fn a_snapshot_that_cannot_be_queued_is_reported_failed() {
        let (queue, _held) = mpsc::channel(1);
        queue.try_send(msg(2, MessageType::MsgAppend)).unwrap(); // now full
        let (events, mut reports) = mpsc::unbounded_channel();
        let t = Transport {
            peers: Mutex::new(BTreeMap::from([(
                2,
                PeerQueue {
                    urls: vec![],
                    queue,
                    sender: 1,
                },
            )])),
            next_sender: std::sync::atomic::AtomicU64::new(2),
            events,
            spawn: None,
        };
        t.send(vec![
            msg(2, MessageType::MsgAppend), // dropped: raft resends appends itself
            msg(2, MessageType::MsgSnapshot), // dropped: must be reported
            msg(3, MessageType::MsgSnapshot), // no such peer: reported too
        ]);
        let mut got = Vec::new();
        while let Ok(ev) = reports.try_recv() {
            got.push(format!("{ev:?}"));
        }
        assert_eq!(got, vec!["Snapshot(2, false)", "Snapshot(3, false)"]);
    }

    /// Only the sender task that serves a peer now reports for it: a replaced sender's late
    /// "disconnected" must not make the leader think a connected peer is down.
    #[test]
    fn only_the_current_sender_reports_for_its_peer() {
        let (queue, _rx) = mpsc::channel(1);
        let (events, _reports) = mpsc::unbounded_channel();
        let t = Transport {
            peers: Mutex::new(BTreeMap::from([(
                2,
                PeerQueue {
                    urls: vec![],
                    queue,
                    sender: 5,
                },
            )])),
            next_sender: std::sync::atomic::AtomicU64::new(6),
            events,
            spawn: None,
        };
        assert!(t.is_current(2, 5));
        assert!(!t.is_current(2, 4), "a replaced sender");
        assert!(!t.is_current(3, 5), "a peer that left");
    }

    /// A test's chunks: whatever the channel gives, then pending forever if `stall`.
    struct TestChunks {
        chunks: std::collections::VecDeque<Vec<u8>>,
        stall: bool,
    }

    impl ChunkSource for TestChunks {
        async fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>, Status> {
            match self.chunks.pop_front() {
                Some(data) => Ok(Some(SnapshotChunk {
                    data,
                    ..Default::default()
                })),
                None if self.stall => std::future::pending().await,
                None => Ok(None),
            }
        }
    }

    fn snapshot_msg(index: u64) -> Message {
        let mut m = msg(1, MessageType::MsgSnapshot);
        m.mut_snapshot().mut_metadata().index = index;
        m
    }

    fn file_ref_of(bytes: &[u8]) -> detcd_core::proto::detcdpb::SnapshotRef {
        let mut c = FileCheck::default();
        c.update(bytes);
        c.to_ref()
    }

    /// The idle timeout in these tests: short, as a stalled sender is the case under test.
    const TEST_IDLE: Duration = Duration::from_millis(50);

    async fn store(
        chunks: &[&[u8]],
        stall: bool,
        file_ref: detcd_core::proto::detcdpb::SnapshotRef,
        files: Arc<dyn SnapshotFiles>,
    ) -> Result<u64, Status> {
        let mut rest = TestChunks {
            chunks: chunks[1..].iter().map(|c| c.to_vec()).collect(),
            stall,
        };
        store_snapshot_file(
            &snapshot_msg(7),
            &file_ref,
            chunks[0].to_vec(),
            &mut rest,
            files,
            TEST_IDLE,
        )
        .await
    }

    #[tokio::test]
    async fn a_snapshot_file_is_stored_only_when_it_matches_its_reference() {
        let files = Arc::new(snapshot_files::MemSnapshots::default());
        let good = file_ref_of(b"abcdef");
        assert_eq!(
            store(&[b"abc", b"def"], false, good, files.clone())
                .await
                .unwrap(),
            6
        );
        let mut stored = Vec::new();
        files.open(7).unwrap().read_to_end(&mut stored).unwrap();
        assert_eq!(stored, b"abcdef");

        let other = Arc::new(snapshot_files::MemSnapshots::default());
        for chunks in [&[&b"abc"[..], b"deX"][..], &[b"abc"], &[b"abc", b"defg"]] {
            let e = store(chunks, false, good, other.clone()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::DataLoss, "{chunks:?}: {e}");
            assert!(
                other.open(7).is_err(),
                "{chunks:?}: a refused file was kept"
            );
        }
    }

    /// Regression guard: a sender that vanishes without closing the call would hold the
    /// receiver (and a half-written file) forever without the idle timeout.
    #[tokio::test]
    async fn a_stalled_snapshot_transfer_is_abandoned_after_the_idle_timeout() {
        let files = Arc::new(snapshot_files::MemSnapshots::default());
        let e = store(&[b"abc"], true, file_ref_of(b"abcdef"), files.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
        assert!(files.open(7).is_err(), "a partial file was kept");
    }

    /// A disk that fails while the file is written is this member's fault, not the sender's
    /// file's: Internal (the sender keeps offering that file), not DataLoss.
    #[tokio::test]
    async fn a_disk_failure_while_storing_is_reported_as_internal() {
        struct FullDisk;
        struct FullWriter;
        impl std::io::Write for FullWriter {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("no space left on device"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl snapshot_files::FileWriter for FullWriter {
            fn commit(self: Box<Self>) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl SnapshotFiles for FullDisk {
            fn create(&self, _: u64) -> std::io::Result<Box<dyn snapshot_files::FileWriter>> {
                Ok(Box::new(FullWriter))
            }
            fn open(&self, _: u64) -> std::io::Result<Box<dyn std::io::Read + Send>> {
                Err(std::io::Error::other("none"))
            }
            fn remove(&self, _: u64) {}
        }
        let e = store(
            &[b"abc", b"def"],
            false,
            file_ref_of(b"abcdef"),
            Arc::new(FullDisk),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal, "{e}");
        assert!(e.message().contains("no space left on device"), "{e}");
    }
}
