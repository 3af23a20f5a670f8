//! `detcd gateway start`: etcd's L4 gateway (etcd's `etcdmain/gateway.go` and
//! `proxy/tcpproxy/userspace.go`). A TCP proxy: every accepted connection is piped to one
//! active endpoint, picked round robin among the active endpoints of the best SRV priority; an
//! endpoint that refuses a connection is set inactive and retried (a plain TCP connect) every
//! `retry_delay`. With `--discovery-srv` the endpoints are the `_etcd-client-ssl[-name]` and
//! `_etcd-client[-name]` records, looked up again every `retry_delay` (detcd's addition: etcd
//! 3.4 looks them up once); without `--insecure-discovery` only https endpoints whose TLS
//! certificate verifies for the SRV domain are used, as etcd's `ValidateSecureEndpoints`.

use crate::dns::{Dns, SharedDns};
use detcd_core::config::{Scheme, Url};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The gateway's flags (etcd's names).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `--listen-addr` (default `127.0.0.1:23790`): `host:port`.
    pub listen_addr: String,
    /// `--endpoints` (default `127.0.0.1:2379`): `host:port` or URLs (the scheme is dropped).
    pub endpoints: Vec<String>,
    /// Whether `--endpoints` was given (detcd does not fall back to the default silently).
    pub endpoints_given: bool,
    /// `--discovery-srv`.
    pub discovery_srv: String,
    /// `--discovery-srv-name`.
    pub discovery_srv_name: String,
    /// `--insecure-discovery`: use http records, and https ones unverified.
    pub insecure_discovery: bool,
    /// `--trusted-ca-file`: the CA the discovered https endpoints are verified with (default:
    /// the system's CAs).
    pub trusted_ca_file: String,
    /// `--retry-delay` (default 1 min).
    pub retry_delay: Duration,
}

/// Why the gateway cannot start; printed, exit 1 (etcd's messages where it has them).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Neither client SRV service answered (etcd's `dns lookup errors: ... and ...`).
    #[error("{0}")]
    Srv(String),
    #[error("failed to validate listen address: {0}")]
    ListenAddr(String),
    #[error("failed to resolve listen host: {0}")]
    ListenHost(String),
    #[error("failed to resolve endpoint host: {0}")]
    EndpointHost(String),
    #[error("error parsing endpoint {0:?}")]
    Endpoint(String),
    #[error("SRV or endpoint ({target}:{port}->{addr}:{port}) should not resolve to the gateway listen addr ({listen})")]
    SelfEndpoint {
        target: String,
        port: u16,
        addr: std::net::IpAddr,
        listen: String,
    },
    #[error("no endpoints found{0}")]
    NoEndpoints(String),
    #[error("{0}")]
    Listen(String),
}

/// One endpoint the gateway may forward to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// A name (resolved when dialed) or an IP.
    pub host: String,
    pub port: u16,
    /// The SRV record's priority (0 for `--endpoints`): lower is preferred.
    pub priority: u16,
    /// False once a connection to it failed, until a retry connects.
    pub active: bool,
}

/// Splits `host:port` (brackets for IPv6), dropping a `scheme://` prefix (etcd's stripSchema).
pub fn split_endpoint(ep: &str) -> Option<(String, u16)> {
    let ep = ep.split_once("://").map(|(_, rest)| rest).unwrap_or(ep);
    let ep = ep.trim_end_matches('/');
    let (host, port) = ep.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// The endpoints from SRV records (validated unless insecure), each with its priority.
async fn discover(cfg: &GatewayConfig, dns: &dyn Dns) -> Result<Vec<Remote>, GatewayError> {
    let https = detcd_core::srv::srv_query_name(
        &detcd_core::srv::srv_service("etcd-client", &cfg.discovery_srv_name, Scheme::Https),
        &cfg.discovery_srv,
    );
    let http = detcd_core::srv::srv_query_name(
        &detcd_core::srv::srv_service("etcd-client", &cfg.discovery_srv_name, Scheme::Http),
        &cfg.discovery_srv,
    );
    let a = dns.lookup_srv(&https).await.map_err(|e| e.message);
    let b = dns.lookup_srv(&http).await.map_err(|e| e.message);
    let urls = detcd_core::srv::client_endpoints(&a, &b).map_err(GatewayError::Srv)?;
    tracing::info!(srv_server = %cfg.discovery_srv, endpoints = ?urls.iter().map(|u| u.to_string()).collect::<Vec<_>>(), "discovered cluster from SRV");
    let priority_of = |u: &Url| {
        let answer = if u.scheme == Scheme::Https { &a } else { &b };
        answer
            .as_ref()
            .ok()
            .and_then(|rs| {
                rs.iter()
                    .find(|r| r.target.trim_end_matches('.') == u.host && r.port == u.port)
            })
            .map(|r| r.priority)
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for u in &urls {
        if !cfg.insecure_discovery {
            if let Err(why) = validate_secure(cfg, dns, u).await {
                refused.push(why);
                continue;
            }
        }
        out.push(Remote {
            host: u.host.clone(),
            port: u.port,
            priority: priority_of(u),
            active: true,
        });
    }
    if !refused.is_empty() {
        tracing::warn!(srv_server = %cfg.discovery_srv, "failed to validate discovered endpoints: {}", refused.join(","));
    }
    Ok(out)
}

/// etcd's `ValidateSecureEndpoints` for one endpoint: https, and a TLS handshake whose
/// certificate verifies for the SRV domain against `--trusted-ca-file` (or the system's CAs).
async fn validate_secure(cfg: &GatewayConfig, dns: &dyn Dns, u: &Url) -> Result<(), String> {
    if u.scheme != Scheme::Https {
        return Err(format!("{:?} is insecure", u.to_string()));
    }
    let fail = |e: String| format!("{:?} failed to dial ({e})", u.to_string());
    let mut roots = rustls::RootCertStore::empty();
    if cfg.trusted_ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
    } else {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&cfg.trusted_ca_file)
            .map_err(|e| fail(format!("--trusted-ca-file {}: {e}", cfg.trusted_ca_file)))?;
        for c in certs {
            let c = c.map_err(|e| fail(e.to_string()))?;
            roots.add(c).map_err(|e| fail(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = crate::dns::dial_addr(dns, &u.host)
        .await
        .map_err(|e| fail(e.message))?;
    let connect = crate::tls::connect_named(
        Arc::new(tls),
        &u.host,
        u.port,
        Some(addr),
        Some(&cfg.discovery_srv),
    );
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail("i/o timeout".into())),
    }
}

/// The endpoints to start with: discovered, else `--endpoints`.
async fn initial_remotes(cfg: &GatewayConfig, dns: &dyn Dns) -> Result<Vec<Remote>, GatewayError> {
    let mut remotes = if cfg.discovery_srv.is_empty() {
        Vec::new()
    } else {
        discover(cfg, dns).await?
    };
    if remotes.is_empty() {
        if !cfg.discovery_srv.is_empty() && !cfg.endpoints_given {
            // etcd would fall back to the default --endpoints (127.0.0.1:2379) here.
            return Err(GatewayError::NoEndpoints(format!(
                " in the SRV records of {} (https records that verify, or any with --insecure-discovery); \
                 give --endpoints to fall back to",
                cfg.discovery_srv
            )));
        }
        for ep in &cfg.endpoints {
            let (host, port) =
                split_endpoint(ep).ok_or_else(|| GatewayError::Endpoint(ep.clone()))?;
            remotes.push(Remote {
                host,
                port,
                priority: 0,
                active: true,
            });
        }
    }
    Ok(remotes)
}

/// The gateway's state: its endpoints and the round-robin position.
struct Proxy {
    remotes: Mutex<(Vec<Remote>, usize)>,
    dns: SharedDns,
    retry_delay: Duration,
}

impl Proxy {
    /// The next active endpoint of the best priority, round robin.
    fn pick(&self, skip: &[(String, u16)]) -> Option<Remote> {
        let mut g = self.remotes.lock().unwrap();
        let (remotes, count) = &mut *g;
        let eligible = |r: &Remote| r.active && !skip.contains(&(r.host.clone(), r.port));
        let best = remotes
            .iter()
            .filter(|r| eligible(r))
            .map(|r| r.priority)
            .min()?;
        let n = remotes.len();
        for _ in 0..n {
            let r = &remotes[*count % n];
            *count += 1;
            if eligible(r) && r.priority == best {
                return Some(r.clone());
            }
        }
        None
    }

    fn set_active(&self, host: &str, port: u16, active: bool) {
        let mut g = self.remotes.lock().unwrap();
        for r in g.0.iter_mut() {
            if r.host == host && r.port == port {
                r.active = active;
            }
        }
    }

    async fn dial(&self, r: &Remote) -> std::io::Result<TcpStream> {
        let ip = crate::dns::dial_addr(self.dns.as_ref(), &r.host)
            .await
            .map_err(|e| std::io::Error::other(e.message))?;
        tokio::time::timeout(
            Duration::from_secs(3),
            TcpStream::connect(SocketAddr::new(ip, r.port)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "i/o timeout"))?
    }

    async fn serve(self: Arc<Self>, mut inbound: TcpStream) {
        let mut tried = Vec::new();
        let out = loop {
            let Some(r) = self.pick(&tried) else {
                tracing::warn!("no active endpoint to proxy a client connection to");
                return;
            };
            match self.dial(&r).await {
                Ok(s) => break s,
                Err(e) => {
                    self.set_active(&r.host, r.port, false);
                    tracing::warn!(address = %format!("{}:{}", r.host, r.port), interval = ?self.retry_delay, error = %e, "deactivated endpoint");
                    tried.push((r.host, r.port));
                }
            }
        };
        let _ = inbound.set_nodelay(true);
        let _ = out.set_nodelay(true);
        let mut out = out;
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
    }

    /// Every `retry_delay`: look the SRV records up again (if any), and try inactive endpoints.
    async fn monitor(self: Arc<Self>, cfg: GatewayConfig) {
        loop {
            tokio::time::sleep(self.retry_delay).await;
            if !cfg.discovery_srv.is_empty() {
                match discover(&cfg, self.dns.as_ref()).await {
                    Ok(found) if !found.is_empty() => {
                        let mut g = self.remotes.lock().unwrap();
                        let old = std::mem::take(&mut g.0);
                        g.0 = found
                            .into_iter()
                            .map(|mut r| {
                                if let Some(o) = old.iter().find(|o| o.host == r.host && o.port == r.port) {
                                    r.active = o.active;
                                }
                                r
                            })
                            .collect();
                    }
                    Ok(_) => tracing::warn!("SRV records list no usable endpoint now; keeping the previous ones"),
                    Err(e) => tracing::warn!("looking up the SRV records again failed: {e}; keeping the previous endpoints"),
                }
            }
            let inactive: Vec<Remote> = {
                let g = self.remotes.lock().unwrap();
                g.0.iter().filter(|r| !r.active).cloned().collect()
            };
            for r in inactive {
                match self.dial(&r).await {
                    Ok(_) => {
                        self.set_active(&r.host, r.port, true);
                        tracing::info!(address = %format!("{}:{}", r.host, r.port), "activated");
                    }
                    Err(e) => {
                        tracing::warn!(address = %format!("{}:{}", r.host, r.port), interval = ?self.retry_delay, error = %e, "failed to activate endpoint (stay inactive for another interval)")
                    }
                }
            }
        }
    }
}

/// Checks, binds and runs the gateway until it fails (etcd's `startGateway`).
pub async fn run_gateway(cfg: GatewayConfig, dns: SharedDns) -> Result<(), GatewayError> {
    let remotes = initial_remotes(&cfg, dns.as_ref()).await?;
    let (lhost, lport) = split_endpoint(&cfg.listen_addr)
        .ok_or_else(|| GatewayError::ListenAddr(cfg.listen_addr.clone()))?;
    let laddrs = crate::dns::resolve_host(dns.as_ref(), &lhost)
        .await
        .map_err(|_| GatewayError::ListenHost(lhost.clone()))?;
    for r in &remotes {
        let eaddrs = crate::dns::resolve_host(dns.as_ref(), &r.host)
            .await
            .map_err(|_| GatewayError::EndpointHost(r.host.clone()))?;
        if r.port != lport {
            continue;
        }
        if let Some(a) = eaddrs.iter().find(|a| laddrs.contains(a)) {
            return Err(GatewayError::SelfEndpoint {
                target: r.host.clone(),
                port: r.port,
                addr: *a,
                listen: cfg.listen_addr.clone(),
            });
        }
    }
    if remotes.is_empty() {
        return Err(GatewayError::NoEndpoints(String::new()));
    }
    let bind_ip = *laddrs
        .first()
        .ok_or_else(|| GatewayError::ListenHost(lhost.clone()))?;
    let bind = SocketAddr::new(bind_ip, lport);
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| GatewayError::Listen(format!("listen tcp {bind}: {e}")))?;
    tracing::info!(endpoints = ?remotes.iter().map(|r| format!("{}:{}", r.host, r.port)).collect::<Vec<_>>(), listen = %cfg.listen_addr, "ready to proxy client requests");
    let proxy = Arc::new(Proxy {
        remotes: Mutex::new((remotes, 0)),
        dns,
        retry_delay: cfg.retry_delay,
    });
    tokio::spawn(proxy.clone().monitor(cfg));
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(proxy.clone().serve(s));
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_as_etcd_strips_schemes() {
        assert_eq!(
            split_endpoint("127.0.0.1:2379"),
            Some(("127.0.0.1".into(), 2379))
        );
        assert_eq!(
            split_endpoint("http://infra0.example.com:2379"),
            Some(("infra0.example.com".into(), 2379))
        );
        assert_eq!(
            split_endpoint("https://[::1]:2379"),
            Some(("::1".into(), 2379))
        );
        assert_eq!(split_endpoint("nohost"), None);
        assert_eq!(split_endpoint(":2379"), None);
        assert_eq!(split_endpoint("a:99999"), None);
    }

    #[test]
    fn pick_is_round_robin_over_the_best_priority() {
        let r = |h: &str, p: u16, active: bool| Remote {
            host: h.into(),
            port: 1,
            priority: p,
            active,
        };
        let proxy = Proxy {
            remotes: Mutex::new((
                vec![
                    r("a", 0, true),
                    r("b", 0, true),
                    r("c", 1, true),
                    r("d", 0, false),
                ],
                0,
            )),
            dns: Arc::new(crate::dns::NoDns),
            retry_delay: Duration::from_secs(1),
        };
        let picks: Vec<String> = (0..4).map(|_| proxy.pick(&[]).unwrap().host).collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
        // Failover: the best priority's endpoints gone, the next priority serves.
        proxy.set_active("a", 1, false);
        proxy.set_active("b", 1, false);
        assert_eq!(proxy.pick(&[]).unwrap().host, "c");
        assert_eq!(proxy.pick(&[("c".into(), 1)]), None);
    }
}
