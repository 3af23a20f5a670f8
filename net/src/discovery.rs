//! The executor of etcd discovery (`--discovery`): drives core's sans-IO
//! [`V2Discovery`](detcd_core::discovery::V2Discovery) machine, performing its HTTP requests
//! with hyper (through `--discovery-proxy` when set; https verified against the system's CA
//! certificates, `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured), its sleeps with the runtime's
//! timer and its log lines with `tracing`. Under madsim the same code runs over simulated TCP
//! (plain http only).

use detcd_core::discovery::{
    v2::MAX_BODY_BYTES, DiscoveryError, HttpRequest, HttpResponse, Log, LogLevel, Method, Step,
    Transport, V2Discovery,
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
        let tls = crate::transport::PeerDialTls {
            config: crate::tls::Tls::setup(&plan).ok().map(|t| t.peer_dial),
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
