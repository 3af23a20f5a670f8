//! Name resolution for DNS SRV discovery and the gateway, behind the [`Dns`] interface so the
//! simulator can answer with its own records, delays and failures.
//!
//! Production ([`SystemDns`], not under madsim): SRV questions go to hickory-resolver with the
//! system's resolver configuration (`/etc/resolv.conf`), host names to the system's resolver
//! (getaddrinfo, so `/etc/hosts` counts, as for Go's resolver). With
//! `--discovery-srv-resolver ip:port` every question goes to that DNS server instead (over UDP,
//! falling back to TCP for truncated answers), for split-horizon setups and tests.
//!
//! The bootstrap lookups ([`lookup_server_srv`]) retry a DNS timeout with backoff and then give
//! up with a clear error; an answer (records, or "no such host") is never retried, as etcd.

use detcd_core::config::{Scheme, Url};
use detcd_core::srv::{self, HostAddrs, SrvAnswer, SrvLookups, SrvRecord};
use futures::future::BoxFuture;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why a lookup gave no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsError {
    /// Go's resolver's wording where it has one (`lookup <name> on <server>: no such host`).
    pub message: String,
    /// The server did not answer in time (worth retrying); anything else is an answer.
    pub timeout: bool,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A DNS resolver: SRV records and host addresses.
pub trait Dns: Send + Sync {
    /// The SRV records of `name` (`_service._tcp.domain`, no trailing dot needed).
    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>>;
    /// The addresses of `host` (a name; callers never pass IP literals).
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>>;
    /// Whose answers these are, for messages (`127.0.0.53:53`, `the system resolver`).
    fn describe(&self) -> String;
}

/// A shared resolver handle.
pub type SharedDns = Arc<dyn Dns>;

/// Resolves `host` through `dns` unless it is an IP literal.
pub async fn resolve_host(dns: &dyn Dns, host: &str) -> Result<Vec<IpAddr>, DnsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    dns.lookup_ip(host.trim_end_matches('.')).await
}

/// The address to dial for `host`: the first IPv4 address, else the first (Go's choice).
pub async fn dial_addr(dns: &dyn Dns, host: &str) -> Result<IpAddr, DnsError> {
    let addrs = resolve_host(dns, host).await?;
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| DnsError {
            message: format!("lookup {host}: no such host"),
            timeout: false,
        })
}

/// How often and how long [`lookup_server_srv`] retries a DNS server that does not answer.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Lookups in all (the first included) before giving up.
    pub attempts: u32,
    /// The pause after the first timeout; doubled after each further one.
    pub first_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl Default for Retry {
    /// 4 attempts, backoff 1, 2, 4 s between them.
    fn default() -> Self {
        Retry {
            attempts: 4,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// DNS did not answer after every retry: the member stops with this.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DNS SRV discovery failed: {what} did not answer after {attempts} attempts ({last}); check --discovery-srv-resolver or the system resolver configuration")]
pub struct DnsTimeout {
    /// The name looked up.
    pub what: String,
    /// How many times it was asked.
    pub attempts: u32,
    /// The last attempt's error.
    pub last: String,
}

async fn with_retry<T, F>(
    retry: Retry,
    what: &str,
    mut f: F,
) -> Result<Result<T, DnsError>, DnsTimeout>
where
    F: FnMut() -> BoxFuture<'static, Result<T, DnsError>>,
{
    let mut backoff = retry.first_backoff;
    let mut last = String::new();
    for attempt in 1..=retry.attempts.max(1) {
        match f().await {
            Err(e) if e.timeout => {
                tracing::warn!(
                    attempt,
                    "DNS lookup of {what} timed out ({e}); retrying in {backoff:?}"
                );
                last = e.message;
                if attempt < retry.attempts {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry.max_backoff);
                }
            }
            other => return Ok(other),
        }
    }
    Err(DnsTimeout {
        what: what.to_string(),
        attempts: retry.attempts.max(1),
        last,
    })
}

/// Performs every lookup of a server's SRV bootstrap: `_etcd-server-ssl[-name]._tcp.<domain>`,
/// `_etcd-server[-name]._tcp.<domain>`, then the addresses of every target and advertised
/// peer host. Timeouts are retried per `retry`; other failures become part of the answers
/// (detcd-core's `srv::cluster_from_srv` turns them into etcd's messages).
pub async fn lookup_server_srv(
    dns: SharedDns,
    domain: &str,
    srv_name: &str,
    advertised: &[Url],
    retry: Retry,
) -> Result<SrvLookups, DnsTimeout> {
    let mut answers: Vec<SrvAnswer> = Vec::new();
    for scheme in [Scheme::Https, Scheme::Http] {
        let name = srv::srv_query_name(&srv::srv_service("etcd-server", srv_name, scheme), domain);
        let d = dns.clone();
        let n = name.clone();
        let got = with_retry(retry, &name, move || {
            let d = d.clone();
            let n = n.clone();
            Box::pin(async move { d.lookup_srv(&n).await })
        })
        .await?;
        answers.push(got.map_err(|e| e.message));
    }
    let plain = answers.pop().expect("two answers");
    let ssl = answers.pop().expect("two answers");
    let mut hosts = HostAddrs::new();
    for host in srv::hosts_to_resolve(&ssl, &plain, advertised) {
        let d = dns.clone();
        let h = host.clone();
        let got = with_retry(retry, &host, move || {
            let d = d.clone();
            let h = h.clone();
            Box::pin(async move { d.lookup_ip(&h).await })
        })
        .await?;
        hosts.insert(host, got.map_err(|e| e.message));
    }
    Ok(SrvLookups { ssl, plain, hosts })
}

/// The client endpoints of `domain` (`_etcd-client-ssl[-name]` and `_etcd-client[-name]`,
/// etcd's `srv.GetClient`), as the gateway and clients find them.
pub async fn lookup_client_srv(
    dns: &dyn Dns,
    domain: &str,
    srv_name: &str,
) -> Result<Vec<Url>, String> {
    let https = srv::srv_query_name(
        &srv::srv_service("etcd-client", srv_name, Scheme::Https),
        domain,
    );
    let http = srv::srv_query_name(
        &srv::srv_service("etcd-client", srv_name, Scheme::Http),
        domain,
    );
    let a = dns.lookup_srv(&https).await.map_err(|e| e.message);
    let b = dns.lookup_srv(&http).await.map_err(|e| e.message);
    srv::client_endpoints(&a, &b)
}

/// The production resolver (see the module docs).
#[cfg(not(madsim))]
pub struct SystemDns {
    resolver: hickory_resolver::TokioResolver,
    /// `Some(server)` with `--discovery-srv-resolver`: host names go to it too.
    server: Option<std::net::SocketAddr>,
    describe: String,
}

/// Why a resolver could not be set up (exits 1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DnsSetupError(pub String);

/// Parses `--discovery-srv-resolver`: `ip:port`, or an IP alone for port 53.
pub fn parse_resolver_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    Err(format!(
        "expected a DNS server address as ip:port, got {s:?}"
    ))
}

#[cfg(not(madsim))]
impl SystemDns {
    /// The system resolver configuration, or `server` when given (an `ip:port`).
    pub fn new(server: &str) -> Result<SystemDns, DnsSetupError> {
        use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let build_err = |e: hickory_resolver::net::NetError| {
            DnsSetupError(format!("cannot set up the DNS resolver: {e}"))
        };
        if server.is_empty() {
            let (config, mut opts) =
                hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                    DnsSetupError(format!(
                        "cannot read the system resolver configuration: {e}"
                    ))
                })?;
            let describe = config
                .name_servers()
                .first()
                .map(|n| {
                    let port = n.connections.first().map(|c| c.port).unwrap_or(53);
                    std::net::SocketAddr::new(n.ip, port).to_string()
                })
                .unwrap_or_else(|| "the system resolver".into());
            opts.cache_size = 0;
            let mut b = hickory_resolver::Resolver::builder_with_config(
                config,
                TokioRuntimeProvider::default(),
            );
            *b.options_mut() = opts;
            return Ok(SystemDns {
                resolver: b.build().map_err(build_err)?,
                server: None,
                describe,
            });
        }
        let addr = parse_resolver_addr(server).map_err(DnsSetupError)?;
        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
        for c in &mut ns.connections {
            c.port = addr.port();
        }
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let mut b = hickory_resolver::Resolver::builder_with_config(
            config,
            TokioRuntimeProvider::default(),
        );
        let opts = b.options_mut();
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        opts.use_hosts_file = ResolveHosts::Never;
        Ok(SystemDns {
            resolver: b.build().map_err(build_err)?,
            server: Some(addr),
            describe: addr.to_string(),
        })
    }

    fn error(&self, name: &str, e: hickory_resolver::net::NetError) -> DnsError {
        let text = e.to_string();
        let timeout = matches!(e, hickory_resolver::net::NetError::Timeout)
            || text.contains("timed out")
            || text.contains("timeout");
        let why = if timeout {
            "i/o timeout".to_string()
        } else if e.is_nx_domain() || e.is_no_records_found() {
            "no such host".to_string()
        } else {
            text
        };
        DnsError {
            message: format!("lookup {name} on {}: {why}", self.describe),
            timeout,
        }
    }
}

#[cfg(not(madsim))]
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

#[cfg(not(madsim))]
impl Dns for SystemDns {
    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>> {
        Box::pin(async move {
            let answer = self
                .resolver
                .srv_lookup(fqdn(name))
                .await
                .map_err(|e| self.error(name, e))?;
            Ok(answer
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    hickory_resolver::proto::rr::RData::SRV(r) => Some(r),
                    _ => None,
                })
                .map(|r| SrvRecord {
                    priority: r.priority,
                    weight: r.weight,
                    port: r.port,
                    target: r.target.to_utf8(),
                })
                .collect())
        })
    }

    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move {
            if self.server.is_none() {
                // The system's resolver, as for every other name the member resolves.
                return match tokio::net::lookup_host((host, 0)).await {
                    Ok(it) => {
                        let v: Vec<IpAddr> = it.map(|a| a.ip()).collect();
                        if v.is_empty() {
                            Err(DnsError {
                                message: format!("lookup {host}: no such host"),
                                timeout: false,
                            })
                        } else {
                            Ok(v)
                        }
                    }
                    Err(e) => Err(DnsError {
                        message: format!("lookup {host}: {e}"),
                        timeout: e.kind() == std::io::ErrorKind::TimedOut,
                    }),
                };
            }
            let answer = self
                .resolver
                .lookup_ip(fqdn(host))
                .await
                .map_err(|e| self.error(host, e))?;
            Ok(answer.iter().collect())
        })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// A resolver that knows nothing (the simulator's default): every lookup is "no such host".
pub struct NoDns;

impl Dns for NoDns {
    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>> {
        Box::pin(async move {
            Err(DnsError {
                message: format!("lookup {name}: no such host"),
                timeout: false,
            })
        })
    }
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move {
            Err(DnsError {
                message: format!("lookup {host}: no such host"),
                timeout: false,
            })
        })
    }
    fn describe(&self) -> String {
        "no resolver".into()
    }
}
