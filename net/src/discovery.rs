//! The executor of etcd discovery (`--discovery`): drives core's sans-IO
//! [`V2Discovery`](detcd_core::discovery::V2Discovery) machine, performing its HTTP requests
//! with hyper (through `--discovery-proxy` when set; https verified against the system's CA
//! certificates, `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured), its sleeps with the runtime's
//! timer and its log lines with `tracing`. Under madsim the same code runs over simulated TCP
//! (plain http only).
//!
//! [`run_v3`] drives core's [`V3Discovery`] (etcd 3.6's `--discovery-token` with
//! `--discovery-endpoints`) with tonic's etcd v3 KV and Watch clients; under madsim over
//! madsim-tonic (plaintext endpoints only).

use crate::proto::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient};
use detcd_core::config::V3DiscoveryConfig;
use detcd_core::discovery::{
    v2::MAX_BODY_BYTES, DiscoveryError, HttpRequest, HttpResponse, Log, LogLevel, Method, Step,
    Transport, V2Discovery,
};
use detcd_core::discovery::{
    KvReply, KvRequest, V3Discovery, V3DiscoveryError, V3Step, WatchUpdate,
};
use detcd_core::proto::etcdserverpb::{
    watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use http_body_util::BodyExt as _;
use hyper::Uri;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Runs a discovery machine to its end: the initial cluster (`name=url,...`) or why not.
pub async fn run_v2(
    mut machine: V2Discovery,
    proxy: Option<&str>,
) -> Result<String, DiscoveryError> {
    loop {
        match machine.poll_step() {
            Some(Step::Send(req)) => {
                let outcome = send(&req, proxy).await;
                machine.handle_response(outcome);
            }
            Some(Step::Sleep { ms, log }) => {
                emit(&log);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                machine.handle_slept();
            }
            Some(Step::Log(log)) => emit(&log),
            Some(Step::Done(result)) => return result,
            None => {
                return Err(DiscoveryError::Request(
                    "the discovery state machine stopped without an outcome".into(),
                ))
            }
        }
    }
}

/// Prints a line the machine reports, at its level.
pub fn emit(log: &Log) {
    match log.level {
        LogLevel::Info => tracing::info!("{}", log.text),
        LogLevel::Warn => tracing::warn!("{}", log.text),
        LogLevel::Error => tracing::error!("{}", log.text),
    }
}

/// Performs one request within its deadlines.
pub async fn send(req: &HttpRequest, proxy: Option<&str>) -> Transport {
    let work = send_inner(req, proxy);
    match req.timeout_ms {
        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), work).await {
            Ok(t) => t,
            Err(_) => Transport::TimedOut,
        },
        None => work.await,
    }
}

/// Host and port of a URL's authority (the scheme's default port when none is given).
fn host_port(uri: &Uri) -> Result<(String, u16), String> {
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Ok((host, port))
}

async fn connect(host: &str, port: u16, timeout_ms: u64) -> Result<tokio::net::TcpStream, String> {
    let target = format!("{host}:{port}");
    match tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        tokio::net::TcpStream::connect(target.as_str()),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("dial tcp {target}: {e}")),
        Err(_) => Err(format!("dial tcp {target}: i/o timeout")),
    }
}

async fn send_inner(req: &HttpRequest, proxy: Option<&str>) -> Transport {
    match exchange(req, proxy).await {
        Ok(r) => Transport::Response(r),
        Err(e) => Transport::Failed(e),
    }
}

async fn exchange(req: &HttpRequest, proxy: Option<&str>) -> Result<HttpResponse, String> {
    let uri: Uri = req
        .url
        .parse()
        .map_err(|e| format!("parse {:?}: {e}", req.url))?;
    let https = uri.scheme_str() == Some("https");
    let (host, port) = host_port(&uri)?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| format!("{host}:{port}"));
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let proxy = match proxy.filter(|p| !p.is_empty()) {
        Some(p) => Some(
            p.parse::<Uri>()
                .map_err(|e| format!("--discovery-proxy {p:?}: {e}"))?,
        ),
        None => None,
    };
    let (stream, target) = match &proxy {
        None => (connect(&host, port, req.connect_timeout_ms).await?, path),
        Some(p) => {
            let (ph, pp) = host_port(p)?;
            let mut s = connect(&ph, pp, req.connect_timeout_ms).await?;
            if https {
                tunnel(&mut s, &host, port).await?;
                (s, path)
            } else {
                // A plain-http proxy takes the absolute URL as the request target.
                (s, req.url.clone())
            }
        }
    };
    if https {
        let tls = tls_connect(stream, &host).await?;
        request(tls, req, &authority, &target).await
    } else {
        request(stream, req, &authority, &target).await
    }
}

/// An HTTP CONNECT tunnel through the proxy to `host:port`.
async fn tunnel(s: &mut tokio::net::TcpStream, host: &str, port: u16) -> Result<(), String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hello = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    s.write_all(hello.as_bytes())
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    // The proxy's answer ends at the blank line; a bound keeps a broken proxy from feeding us.
    while !got.ends_with(b"\r\n\r\n") {
        if got.len() > 16 * 1024 {
            return Err("proxy: CONNECT answer too long".into());
        }
        let n = s.read(&mut byte).await.map_err(|e| format!("proxy: {e}"))?;
        if n == 0 {
            return Err("proxy: connection closed during CONNECT".into());
        }
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!(
            "proxy refused CONNECT to {host}:{port}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(())
}

#[cfg(not(madsim))]
async fn tls_connect(
    stream: tokio::net::TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config = crate::tls::system_client_config().map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("tls: {host}: {e}"))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("tls: {e}"))
}

#[cfg(madsim)]
async fn tls_connect(
    _stream: tokio::net::TcpStream,
    host: &str,
) -> Result<tokio::net::TcpStream, String> {
    Err(format!("https to {host}: the simulator speaks plain http"))
}

/// One HTTP/1.1 exchange on a connected stream; redirects are not followed (the machine
/// follows them, as etcd's client does).
async fn request<S>(
    stream: S,
    req: &HttpRequest,
    authority: &str,
    target: &str,
) -> Result<HttpResponse, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let builder = hyper::Request::builder()
        .uri(target)
        .header("host", authority)
        .header("user-agent", "detcd discovery");
    let request = match req.method {
        Method::Get => builder
            .method("GET")
            .body(http_body_util::Full::new(hyper::body::Bytes::new())),
        Method::Put => builder
            .method("PUT")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                req.form_body.clone().unwrap_or_default(),
            ))),
    }
    .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = resp.status().as_u16();
    let etcd_index = header("x-etcd-index");
    let location = header("location");
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(HttpResponse {
        status,
        etcd_index,
        location,
        body,
    })
}

/// `--discovery-fallback proxy` (etcd 3.4's default): the cluster behind the discovery URL
/// is full, so this process serves its client URLs as a proxy to that cluster's members
/// instead of joining. etcd 3.4 runs its v2 HTTP proxy there; detcd runs its gateway (an L4
/// proxy with failover, so v3 gRPC passes through too) on each `--listen-client-urls`
/// address, to the client URLs the discovered members publish (asked over detcd's peer
/// protocol, else etcd's `GET <peer URL>/members`). Runs until a listener fails. (Not in the
/// simulator, which has no gateway.)
#[cfg(not(madsim))]
pub async fn run_fallback_proxy(cfg: detcd_core::config::Config) -> Result<(), String> {
    tracing::info!("discovery cluster full, falling back to proxy");
    let machine = V2Discovery::get_cluster(&cfg.discovery.url).map_err(|e| e.to_string())?;
    let proxy = Some(cfg.discovery.proxy.as_str()).filter(|p| !p.is_empty());
    let found = run_v2(machine, proxy)
        .await
        .map_err(|e| format!("failed to get the cluster from the discovery service ({e})"))?;
    let members = detcd_core::config::parse_initial_cluster(&found).map_err(|e| e.to_string())?;
    let peer_urls: Vec<String> = members
        .iter()
        .flat_map(|m| m.peer_urls.iter().map(|u| u.to_string()))
        .collect();
    let client_urls = cluster_client_urls(&cfg, &peer_urls).await;
    if client_urls.is_empty() {
        return Err(format!(
            "proxy: none of the discovered members ({}) told its client URLs",
            peer_urls.join(",")
        ));
    }
    tracing::info!(endpoints = %client_urls.join(","), "proxy: forwarding client traffic to the discovered cluster");
    let dns: crate::dns::SharedDns = std::sync::Arc::new(crate::dns::NoDns);
    let runs = cfg.listen_client_urls.iter().map(|u| {
        let gw = crate::gateway::GatewayConfig {
            listen_addr: format!("{}:{}", u.host, u.port),
            endpoints: client_urls.clone(),
            endpoints_given: true,
            discovery_srv: String::new(),
            discovery_srv_name: String::new(),
            insecure_discovery: false,
            trusted_ca_file: String::new(),
            retry_delay: Duration::from_secs(60),
        };
        let dns = dns.clone();
        async move { crate::gateway::run_gateway(gw, dns).await }
    });
    let results = futures::future::join_all(runs).await;
    for r in results {
        r.map_err(|e| format!("proxy: {e}"))?;
    }
    Ok(())
}

/// The client URLs the members at `peer_urls` publish.
#[cfg(not(madsim))]
async fn cluster_client_urls(
    cfg: &detcd_core::config::Config,
    peer_urls: &[String],
) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    if let Ok(plan) = detcd_core::tls::plan(cfg) {
        let setup = crate::tls::Tls::setup(&plan).ok();
        let tls = crate::transport::PeerDialTls {
            config: setup.as_ref().map(|t| t.peer_dial.clone()),
            files: setup.map(|t| t.files).unwrap_or_default(),
            dns: None,
            server_name: None,
        };
        for c in crate::transport::fetch_remote_clusters(peer_urls, &tls).await {
            for m in c.members {
                urls.extend(m.client_urls);
            }
        }
    }
    if urls.is_empty() {
        // etcd members: their peer port's `/members` (etcdserver/api/etcdhttp/peer.go).
        for peer in peer_urls {
            let req = HttpRequest {
                method: Method::Get,
                url: format!("{}/members", peer.trim_end_matches('/')),
                form_body: None,
                timeout_ms: Some(5_000),
                connect_timeout_ms: 5_000,
            };
            if let Transport::Response(r) = send(&req, None).await {
                #[derive(serde::Deserialize)]
                struct EtcdMember {
                    #[serde(rename = "clientURLs", default)]
                    client_urls: Vec<String>,
                }
                if let Ok(ms) = serde_json::from_slice::<Vec<EtcdMember>>(&r.body) {
                    urls.extend(ms.into_iter().flat_map(|m| m.client_urls));
                    break;
                }
            }
        }
    }
    urls.sort();
    urls.dedup();
    urls
}

// ---------------------------------------------------------------------------------------------
// etcd 3.6's v3 discovery (`--discovery-token` with `--discovery-endpoints`)
// ---------------------------------------------------------------------------------------------

/// clientv3's `defaultUnaryMaxRetries`: a Range that found its endpoint unavailable is tried
/// again (on the next endpoint) at most this often within its deadline.
const UNARY_MAX_RETRIES: u32 = 100;

/// clientv3's `defaultBackoffWaitBetween`: the pause before such a retry.
const UNARY_RETRY_WAIT: Duration = Duration::from_millis(25);

/// The first and the longest pause before the watch is opened again after its stream broke
/// (clientv3 resumes a broken watch stream for ever; grpc's reconnection backs off).
const WATCH_RESUME_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(4));

/// Why v3 discovery failed: the machine's verdict (etcd's texts), or the client could not be
/// set up (a certificate file, an endpoint that is not one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum V3Error {
    #[error("{0}")]
    Discovery(#[from] V3DiscoveryError),
    #[error("{0}")]
    Client(String),
}

impl V3Error {
    /// etcd's `ErrFullCluster`.
    pub fn is_full_cluster(&self) -> bool {
        matches!(self, V3Error::Discovery(e) if e.is_full_cluster())
    }
}

/// Runs a v3 discovery machine to its end against the discovery cluster at `cfg.endpoints`:
/// the initial cluster (`name=url,...`) or why not.
///
/// The client does what etcd 3.6's clientv3 does for the machine: it keeps one gRPC
/// connection, to the first endpoint (in `--discovery-endpoints`' sorted order) that accepts
/// one within `--discovery-dial-timeout`, and moves on to the next endpoint when that
/// connection fails; each Range and Put has the step's deadline (`--discovery-request-timeout`;
/// Go's text `context deadline exceeded` when it passes); a Range answered `Unavailable` is
/// retried on the next endpoint (as clientv3's retry interceptor does for repeatable
/// requests), a Put is not (the machine retries it after its backoff). The watch is resumed
/// after an `Unavailable`/`Internal` break (on the next endpoint, from the revision after the
/// last event it delivered) without the machine noticing, as clientv3's watcher does; any
/// other end of the stream is reported as [`WatchUpdate::Closed`]. HTTP/2 keepalive pings
/// follow `--discovery-keepalive-time`/`--discovery-keepalive-timeout`.
///
/// TLS (not in the simulator): an `https://` endpoint always, an `http://` one never, a bare
/// `host:port` when clientv3 would build a TLS configuration (a `--discovery-cert`, `-key` or
/// `-cacert`, `--discovery-insecure-transport=false`, or
/// `--discovery-insecure-skip-tls-verify`). The server is verified against
/// `--discovery-cacert`, else the system's CA certificates.
pub async fn run_v3(mut machine: V3Discovery, cfg: &V3DiscoveryConfig) -> Result<String, V3Error> {
    let mut client = V3Client::new(cfg)?;
    let mut watch: Option<MembersWatch> = None;
    loop {
        match machine.poll_step() {
            Some(V3Step::Send {
                request,
                timeout_ms,
            }) => {
                let reply = client.request(&request, timeout_ms).await;
                machine.handle_reply(reply);
            }
            Some(V3Step::Watch(create)) => {
                // Dropping the earlier watch closes its stream.
                watch = Some(MembersWatch::new(create));
            }
            Some(V3Step::Sleep { ms, log }) => {
                emit(&log);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                machine.handle_slept();
            }
            Some(V3Step::Log(log)) => emit(&log),
            Some(V3Step::Done(result)) => return result.map_err(V3Error::Discovery),
            None => match watch.as_mut() {
                Some(w) => {
                    let update = w.next(&mut client).await;
                    if matches!(update, WatchUpdate::Closed(_)) {
                        watch = None;
                    }
                    machine.handle_watch(update);
                }
                None => {
                    return Err(V3Error::Client(
                        "the discovery state machine stopped without an outcome".into(),
                    ))
                }
            },
        }
    }
}

/// One `--discovery-endpoints` entry.
#[derive(Clone, Debug)]
struct Target {
    /// As given, for messages.
    text: String,
    /// `http://host:port`: what tonic dials (the TLS connector, if any, does the rest).
    uri: String,
    #[cfg_attr(madsim, allow(dead_code))]
    host: String,
    #[cfg_attr(madsim, allow(dead_code))]
    port: u16,
    tls: bool,
}

/// The discovery service's client: one connection at a time, failing over in endpoint order.
struct V3Client {
    targets: Vec<Target>,
    current: usize,
    channel: Option<tonic::transport::Channel>,
    dial_timeout: Option<Duration>,
    /// `--discovery-request-timeout`: also how long opening the watch may take.
    request_timeout: Duration,
    keepalive_time: Option<Duration>,
    keepalive_timeout: Duration,
    #[cfg(not(madsim))]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl V3Client {
    fn new(cfg: &V3DiscoveryConfig) -> Result<V3Client, V3Error> {
        // clientv3's newTLSConfig: a TLS configuration exists with any certificate flag, when
        // insecure transport is off, or when verification is skipped.
        let tls_configured = !cfg.cert_file.is_empty()
            || !cfg.key_file.is_empty()
            || !cfg.cacert_file.is_empty()
            || !cfg.insecure_transport
            || cfg.insecure_skip_tls_verify;
        let mut targets = Vec::new();
        for ep in &cfg.endpoints {
            targets.push(parse_target(ep, tls_configured).map_err(V3Error::Client)?);
        }
        if targets.is_empty() {
            return Err(V3Error::Client(
                "at least one Endpoint is required in client config".into(),
            ));
        }
        #[cfg(not(madsim))]
        let tls = if tls_configured || targets.iter().any(|t| t.tls) {
            Some(
                crate::tls::discovery_client_config(
                    &cfg.cacert_file,
                    &cfg.cert_file,
                    &cfg.key_file,
                    cfg.insecure_skip_tls_verify,
                )
                .map_err(|e| V3Error::Client(e.to_string()))?,
            )
        } else {
            None
        };
        #[cfg(madsim)]
        if let Some(t) = targets.iter().find(|t| t.tls) {
            return Err(V3Error::Client(format!(
                "discovery endpoint {}: TLS is not available in the simulator (plain http only)",
                t.text
            )));
        }
        let ms = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Ok(V3Client {
            targets,
            current: 0,
            channel: None,
            dial_timeout: ms(cfg.dial_timeout_ms),
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            keepalive_time: ms(cfg.keepalive_time_ms),
            keepalive_timeout: Duration::from_millis(cfg.keepalive_timeout_ms),
            #[cfg(not(madsim))]
            tls,
        })
    }

    /// The connection, opening one to the current endpoint or the ones after it.
    async fn channel(&mut self) -> Result<tonic::transport::Channel, String> {
        if let Some(ch) = &self.channel {
            return Ok(ch.clone());
        }
        let n = self.targets.len();
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (self.current + i) % n;
            match self.connect(&self.targets[idx]).await {
                Ok(ch) => {
                    self.current = idx;
                    self.channel = Some(ch.clone());
                    return Ok(ch);
                }
                Err(e) => errors.push(format!("{}: {e}", self.targets[idx].text)),
            }
        }
        Err(format!(
            "cannot connect to the discovery service ({})",
            errors.join("; ")
        ))
    }

    /// Forgets the connection: the next request dials the next endpoint first.
    fn fail_over(&mut self) {
        self.channel = None;
        self.current = (self.current + 1) % self.targets.len();
    }

    async fn connect(&self, t: &Target) -> Result<tonic::transport::Channel, String> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(t.uri.clone())
            .map_err(|e| error_chain(&e))?
            .keep_alive_while_idle(false)
            .keep_alive_timeout(self.keepalive_timeout);
        if let Some(d) = self.dial_timeout {
            endpoint = endpoint.connect_timeout(d);
        }
        if let Some(d) = self.keepalive_time {
            endpoint = endpoint.http2_keep_alive_interval(d);
        }
        let dial = async {
            #[cfg(not(madsim))]
            if t.tls {
                let config = self
                    .tls
                    .clone()
                    .ok_or_else(|| "no TLS configuration".to_string())?;
                let connector = crate::transport::TlsDial::endpoint(config, t.host.clone(), t.port);
                return endpoint
                    .connect_with_connector(connector)
                    .await
                    .map_err(|e| error_chain(&e));
            }
            endpoint.connect().await.map_err(|e| error_chain(&e))
        };
        match self.dial_timeout {
            Some(d) => tokio::time::timeout(d, dial)
                .await
                .unwrap_or_else(|_| Err("context deadline exceeded (dial timeout)".to_string())),
            None => dial.await,
        }
    }

    /// Performs one Range or Put within `timeout_ms`.
    async fn request(&mut self, req: &KvRequest, timeout_ms: u64) -> KvReply {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let repeatable = matches!(req, KvRequest::Range(_));
        let mut retries = 0;
        loop {
            let ch = match self.channel().await {
                Ok(ch) => ch,
                Err(e) => return KvReply::Failed(e),
            };
            let mut kv = KvClient::new(ch);
            let call = async {
                match req {
                    KvRequest::Range(r) => kv
                        .range(r.clone())
                        .await
                        .map(|r| KvReply::Range(r.into_inner())),
                    KvRequest::Put(p) => kv
                        .put(p.clone())
                        .await
                        .map(|r| KvReply::Put(r.into_inner())),
                }
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, call).await {
                Err(_) => return KvReply::Failed("context deadline exceeded".into()),
                Ok(Ok(reply)) => return reply,
                Ok(Err(status)) => {
                    let unavailable = status.code() == tonic::Code::Unavailable;
                    // What the connection rather than the server said: try another one.
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Cancelled
                            | tonic::Code::Internal
                    ) {
                        self.fail_over();
                    }
                    let again = tokio::time::Instant::now() + UNARY_RETRY_WAIT;
                    if unavailable && repeatable && retries < UNARY_MAX_RETRIES && again < deadline
                    {
                        retries += 1;
                        tokio::time::sleep(UNARY_RETRY_WAIT).await;
                        continue;
                    }
                    return KvReply::Failed(grpc_error_text(&status));
                }
            }
        }
    }

    /// Opens a watch stream with this create request; the stream's requests end (and with
    /// them the stream) when the returned sender is dropped.
    async fn open_watch(&mut self, create: WatchCreateRequest) -> Result<OpenWatch, tonic::Status> {
        let ch = self.channel().await.map_err(tonic::Status::unavailable)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(1);
        let _ = tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await;
        let requests =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut client = WatchClient::new(ch);
        match tokio::time::timeout(self.request_timeout, client.watch(requests)).await {
            Ok(Ok(resp)) => Ok(OpenWatch {
                stream: resp.into_inner(),
                _requests: tx,
            }),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::unavailable(
                "context deadline exceeded (opening the watch)",
            )),
        }
    }
}

/// A `--discovery-endpoints` entry as clientv3 reads it (`endpoint.translateEndpoint`):
/// `http://host:port` (plaintext), `https://host:port` (TLS), or `host:port` (TLS when a TLS
/// configuration exists). Unix sockets are not supported.
fn parse_target(ep: &str, tls_configured: bool) -> Result<Target, String> {
    use detcd_core::config::{Scheme, Url};
    let has_scheme = ep.contains("://");
    let url = Url::parse(&if has_scheme {
        ep.to_string()
    } else {
        format!("http://{ep}")
    })
    .map_err(|e| format!("--discovery-endpoints {ep:?}: {e}"))?;
    let tls = if has_scheme {
        url.scheme == Scheme::Https
    } else {
        tls_configured
    };
    let plain = Url {
        scheme: Scheme::Http,
        ..url.clone()
    };
    Ok(Target {
        text: ep.to_string(),
        uri: plain.to_string(),
        host: url.host,
        port: url.port,
        tls,
    })
}

/// An open watch stream and the sender keeping its request side open.
struct OpenWatch {
    stream: tonic::Streaming<WatchResponse>,
    _requests: tokio::sync::mpsc::Sender<WatchRequest>,
}

/// The machine's watch on the members prefix, resumed across broken streams.
struct MembersWatch {
    create: WatchCreateRequest,
    /// The revision to resume from: after the last event delivered.
    next_rev: i64,
    open: Option<OpenWatch>,
    backoff: Duration,
}

impl MembersWatch {
    fn new(create: WatchCreateRequest) -> MembersWatch {
        MembersWatch {
            next_rev: create.start_revision,
            create,
            open: None,
            backoff: WATCH_RESUME_BACKOFF.0,
        }
    }

    /// The next news for the machine.
    async fn next(&mut self, client: &mut V3Client) -> WatchUpdate {
        loop {
            let status = match self.open.as_mut() {
                None => {
                    let mut create = self.create.clone();
                    create.start_revision = self.next_rev;
                    match client.open_watch(create).await {
                        Ok(w) => {
                            self.open = Some(w);
                            continue;
                        }
                        Err(status) => status,
                    }
                }
                Some(w) => match w.stream.message().await {
                    Ok(Some(resp)) => {
                        self.backoff = WATCH_RESUME_BACKOFF.0;
                        for ev in &resp.events {
                            if let Some(kv) = &ev.kv {
                                self.next_rev = self.next_rev.max(kv.mod_revision + 1);
                            }
                        }
                        return WatchUpdate::Response(resp);
                    }
                    Ok(None) => {
                        self.open = None;
                        return WatchUpdate::Closed("watch stream closed by the server".into());
                    }
                    Err(status) => {
                        self.open = None;
                        status
                    }
                },
            };
            // clientv3's isHaltErr: Unavailable and Internal are worth resuming after.
            if !matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Internal
            ) {
                return WatchUpdate::Closed(grpc_error_text(&status));
            }
            client.fail_over();
            tracing::warn!(
                error = %grpc_error_text(&status),
                backoff = %detcd_core::discovery::go_duration(self.backoff.as_millis() as u64),
                "discovery: the watch on the members broke; resuming"
            );
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(WATCH_RESUME_BACKOFF.1);
        }
    }
}

/// grpc-go's error text, as etcd logs a failed request.
fn grpc_error_text(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
