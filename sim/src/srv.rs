//! DNS SRV discovery under simulation: a simulated DNS ([`SimDns`], detcd-net's `Dns`
//! interface) with records that can change while members look them up, per-lookup delays and
//! timeouts; members started by the production `run_member_with_dns` on madsim hosts; and the
//! `[one cluster]` checker: every member either runs in the one cluster all running members
//! share (same cluster ID, each member's ID the one etcd derives from its SRV URL) or stopped
//! with a clear error. Two clusters, or a member running outside the cluster, fail the run.

use crate::cluster::{Client, ExitNote};
use crate::disk::SimDisk;
use detcd_core::config::{parse_urls, Config};
use detcd_core::proto::etcdserverpb::{MemberListRequest, StatusRequest};
use detcd_core::srv::SrvRecord;
use detcd_net::dns::{Dns, DnsError};
use futures::future::BoxFuture;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::{Handle, NodeHandle};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The records served: SRV by name, A by host (names without trailing dots).
#[derive(Clone, Debug, Default)]
pub struct SimZone {
    pub srv: BTreeMap<String, Vec<SrvRecord>>,
    pub a: BTreeMap<String, Vec<IpAddr>>,
}

impl SimZone {
    /// `_etcd-server._tcp.example.com` (or `-ssl`) listing `members` (`(host, ip)`) on port
    /// 2380, with their A records.
    pub fn guide(members: &[(&str, &str)], ssl: bool) -> SimZone {
        let mut z = SimZone::default();
        let name = if ssl {
            "_etcd-server-ssl._tcp.example.com"
        } else {
            "_etcd-server._tcp.example.com"
        };
        for (host, ip) in members {
            z.srv.entry(name.into()).or_default().push(SrvRecord {
                priority: 0,
                weight: 0,
                port: 2380,
                target: format!("{host}."),
            });
            z.a.insert(host.to_string(), vec![ip.parse().unwrap()]);
        }
        z
    }
}

/// How the simulated DNS server behaves.
#[derive(Clone, Debug, Default)]
pub struct DnsBehaviour {
    /// Each answer takes a uniformly drawn delay in this range (milliseconds).
    pub delay_ms: (u64, u64),
    /// Chance (in percent) that a lookup times out (after 2 s, as the production resolver).
    pub timeout_percent: u32,
    /// Every lookup times out.
    pub silent: bool,
}

/// A simulated DNS server shared by the members of a scenario.
#[derive(Clone, Default)]
pub struct SimDns {
    pub zone: Arc<Mutex<SimZone>>,
    pub behaviour: Arc<Mutex<DnsBehaviour>>,
    /// Every SRV question asked, in order (the scenarios assert the lookups happened).
    pub srv_asked: Arc<Mutex<Vec<String>>>,
    /// Lookups that timed out.
    pub timeouts: Arc<Mutex<u64>>,
}

impl SimDns {
    pub fn new(zone: SimZone) -> SimDns {
        let d = SimDns::default();
        *d.zone.lock().unwrap() = zone;
        d
    }

    /// Waits the configured delay; `Err` when the lookup times out.
    async fn wait(&self, name: &str) -> Result<(), DnsError> {
        let b = self.behaviour.lock().unwrap().clone();
        let (timeout, delay) = {
            let mut rng = thread_rng();
            let timeout = b.silent || rng.gen_range(0..100) < b.timeout_percent;
            let delay = if b.delay_ms.1 > b.delay_ms.0 {
                rng.gen_range(b.delay_ms.0..b.delay_ms.1)
            } else {
                b.delay_ms.0
            };
            (timeout, delay)
        };
        if timeout {
            tokio::time::sleep(Duration::from_secs(2)).await;
            *self.timeouts.lock().unwrap() += 1;
            return Err(DnsError {
                message: format!("lookup {name} on sim-dns: i/o timeout"),
                timeout: true,
            });
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Ok(())
    }
}

impl Dns for SimDns {
    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>> {
        Box::pin(async move {
            self.srv_asked.lock().unwrap().push(name.to_string());
            self.wait(name).await?;
            let key = name.trim_end_matches('.').to_ascii_lowercase();
            match self.zone.lock().unwrap().srv.get(&key) {
                Some(r) if !r.is_empty() => Ok(r.clone()),
                _ => Err(DnsError {
                    message: format!("lookup {name} on sim-dns: no such host"),
                    timeout: false,
                }),
            }
        })
    }

    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move {
            self.wait(host).await?;
            let key = host.trim_end_matches('.').to_ascii_lowercase();
            match self.zone.lock().unwrap().a.get(&key) {
                Some(a) if !a.is_empty() => Ok(a.clone()),
                _ => Err(DnsError {
                    message: format!("lookup {host} on sim-dns: no such host"),
                    timeout: false,
                }),
            }
        })
    }

    fn describe(&self) -> String {
        "sim-dns".into()
    }
}

/// The guide's DNS example for one member: `--discovery-srv example.com`, advertised
/// `http://<host>:2380` (a name when `names`, else the IP), listening on the IP.
pub fn srv_config(name: &str, host: &str, ip: &str, names: bool) -> Config {
    let adv = if names { host } else { ip };
    let mut cfg = Config::default();
    cfg.name = name.to_string();
    cfg.data_dir = format!("{name}.etcd");
    cfg.initial_advertise_peer_urls = parse_urls(&format!("http://{adv}:2380")).unwrap();
    cfg.listen_peer_urls = parse_urls(&format!("http://{ip}:2380")).unwrap();
    cfg.listen_client_urls = parse_urls(&format!("http://{ip}:2379")).unwrap();
    cfg.advertise_client_urls = parse_urls(&format!("http://{adv}:2379")).unwrap();
    cfg.initial_cluster_token = "etcd-cluster-1".into();
    cfg.initial_cluster = Vec::new();
    cfg.srv.domain = "example.com".into();
    cfg
}

/// One member of an SRV scenario.
pub struct SrvMember {
    pub name: String,
    pub ip: String,
    pub node: NodeHandle,
    pub exit: ExitNote,
}

impl SrvMember {
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }
}

/// Starts a member on a new host resolving through `dns`.
pub fn start_srv_member(cfg: Config, ip: &str, dns: SimDns) -> SrvMember {
    let name = cfg.name.clone();
    let exit: ExitNote = Arc::new(Mutex::new(None));
    let disk = SimDisk::new();
    let snapshots = detcd_net::snapshot_files::MemSnapshots::default();
    let node = {
        let exit = exit.clone();
        Handle::current()
            .create_node()
            .name(name.clone())
            .ip(ip.parse().unwrap())
            .init(move || {
                let cfg = cfg.clone();
                let disk = disk.clone();
                let exit = exit.clone();
                let snapshots = snapshots.clone();
                let dns = dns.clone();
                async move {
                    crate::cluster::run_on_disk(cfg, disk, snapshots, Arc::new(dns), exit).await
                }
            })
            .build()
    };
    SrvMember {
        name,
        ip: ip.to_string(),
        node,
        exit,
    }
}

/// The errors a member may stop with in an SRV scenario: each names its cause.
pub const CLEAR_ERRORS: &[&str] = &[
    "error querying DNS SRV records for _etcd-server",
    "cannot find local etcd member",
    "has scheme mismatch with expected peer",
    "conflicting cluster ID to the target cluster",
    "DNS SRV discovery failed:",
];

/// What one member looked like at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Running, in this cluster, with this member ID and these member IDs listed.
    Running {
        cluster_id: u64,
        member_id: u64,
        members: Vec<u64>,
    },
    /// Running but not answering Status or MemberList.
    Silent(String),
    /// Stopped with this message.
    Stopped(String),
}

/// The host the checker asks from (create it once per run).
pub fn checker_host() -> NodeHandle {
    Handle::current()
        .create_node()
        .name("srv-checker")
        .ip("10.0.1.250".parse().unwrap())
        .build()
}

/// Asks every member how it ended up, from `client` (see [`checker_host`]).
pub async fn outcomes(client: &NodeHandle, members: &[SrvMember]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for m in members {
        if let Some(e) = m.exit.lock().unwrap().clone() {
            out.push(Outcome::Stopped(e));
            continue;
        }
        let url = m.client_url();
        let got = client
            .spawn(async move {
                let mut c = Client::connect(&url).await.ok_or("cannot connect")?;
                let status = madsim::time::timeout(
                    Duration::from_secs(2),
                    c.maintenance.status(StatusRequest {}),
                )
                .await
                .map_err(|_| "status timed out".to_string())?
                .map_err(|e| e.to_string())?
                .into_inner();
                let list = madsim::time::timeout(
                    Duration::from_secs(2),
                    c.cluster
                        .member_list(MemberListRequest { linearizable: true }),
                )
                .await
                .map_err(|_| "member list timed out".to_string())?
                .map_err(|e| e.to_string())?
                .into_inner();
                let header = status.header.unwrap_or_default();
                let mut members: Vec<u64> = list.members.iter().map(|m| m.id).collect();
                members.sort();
                Ok::<_, String>(Outcome::Running {
                    cluster_id: header.cluster_id,
                    member_id: header.member_id,
                    members,
                })
            })
            .await
            .unwrap_or_else(|e| Err(format!("{e:?}")));
        out.push(got.unwrap_or_else(Outcome::Silent));
    }
    out
}

/// `[one cluster]`: every running member answers in one cluster, whose member list is the
/// running members' IDs plus possibly stopped ones, and every stopped member names a clear
/// cause. Returns the cluster's ID and its sorted member IDs (None when every member stopped).
pub fn check_one_cluster(
    names: &[String],
    outcomes: &[Outcome],
) -> Result<Option<(u64, Vec<u64>)>, String> {
    let mut cluster: Option<(u64, Vec<u64>)> = None;
    for (name, o) in names.iter().zip(outcomes) {
        match o {
            Outcome::Stopped(e) => {
                if !CLEAR_ERRORS.iter().any(|c| e.contains(c)) {
                    return Err(format!("[one cluster] {name} stopped without a clear cause: {e}"));
                }
            }
            Outcome::Silent(e) => {
                return Err(format!(
                    "[one cluster] {name} runs but serves no cluster (neither in the cluster nor stopped with a clear error): {e}; all: {outcomes:?}"
                ))
            }
            Outcome::Running {
                cluster_id,
                member_id,
                members,
            } => {
                if !members.contains(member_id) {
                    return Err(format!("[one cluster] {name} ({member_id:x}) is not in its own member list {members:x?}"));
                }
                match &cluster {
                    None => cluster = Some((*cluster_id, members.clone())),
                    Some((id, ms)) if id == cluster_id && ms == members => {}
                    Some((id, ms)) => {
                        return Err(format!(
                            "[one cluster] two clusters: {name} is in cluster {cluster_id:x} with members {members:x?}, another member in cluster {id:x} with {ms:x?}; all: {outcomes:?}"
                        ))
                    }
                }
            }
        }
    }
    Ok(cluster)
}

/// etcd's member ID for `http://<host>:2380` and the guide's token.
pub fn guide_member_id(host: &str) -> u64 {
    detcd_core::ids::member_id(
        &parse_urls(&format!("http://{host}:2380")).unwrap(),
        "etcd-cluster-1",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(c: u64, m: u64, ms: &[u64]) -> Outcome {
        Outcome::Running {
            cluster_id: c,
            member_id: m,
            members: ms.to_vec(),
        }
    }

    #[test]
    fn the_checker_bites() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let ok = [
            running(1, 10, &[10, 11]),
            running(1, 11, &[10, 11]),
            Outcome::Stopped("cannot find local etcd member \"c\" in SRV records".into()),
        ];
        assert_eq!(check_one_cluster(&names, &ok), Ok(Some((1, vec![10, 11]))));
        let two = [
            running(1, 10, &[10, 11]),
            running(2, 11, &[11, 12]),
            running(2, 12, &[11, 12]),
        ];
        assert!(check_one_cluster(&names, &two)
            .unwrap_err()
            .contains("two clusters"));
        let silent = [
            running(1, 10, &[10]),
            Outcome::Silent("x".into()),
            Outcome::Stopped("stopped".into()),
        ];
        assert!(check_one_cluster(&names, &silent)
            .unwrap_err()
            .starts_with("[one cluster]"));
        let unclear = [
            running(1, 10, &[10]),
            running(1, 10, &[10]),
            Outcome::Stopped("panic".into()),
        ];
        assert!(check_one_cluster(&names, &unclear)
            .unwrap_err()
            .contains("without a clear cause"));
    }
}
