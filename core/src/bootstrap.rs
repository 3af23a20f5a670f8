//! The bootstrap decision: given the configuration and what the data dir holds, restart from
//! the log or create a new cluster from `--initial-cluster`, or refuse with etcd's message
//! (etcd-facts §4). Pure: name resolution comes in as a function.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::{format_initial_cluster, ClusterState, Config, InitialMember, Url};
use crate::ids::{self, format_id};
use crate::proto::detcdpb::MemberRecord;

/// What the net layer found in the data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirState {
    Empty,
    HasLog,
}

/// One member of a cluster being created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<Url>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Data dir holds a log: restart from it; every --initial-* flag is ignored (caller logs one line saying so).
    Restart,
    /// New cluster from --initial-cluster.
    NewCluster {
        cluster_id: u64,
        local_id: u64,
        members: Vec<BootstrapMember>,
    },
    /// `--initial-cluster-state existing`: join a running cluster. `members` is
    /// --initial-cluster (IDs from the token, replaced by the running cluster's when it is
    /// asked: [`plan_join`]); the other members' peer URLs are where to ask.
    Join {
        local_name: String,
        members: Vec<BootstrapMember>,
    },
}

/// A running cluster as one of its members describes itself (the peer Members call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCluster {
    pub cluster_id: u64,
    pub members: Vec<MemberRecord>,
    pub removed: Vec<u64>,
}

/// How a member joining a running cluster starts: the cluster's ID and members, and the ID
/// `member add` gave this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinPlan {
    pub cluster_id: u64,
    pub local_id: u64,
    pub members: Vec<MemberRecord>,
    pub removed: Vec<u64>,
}

/// The hint after "has already been bootstrapped" (etcd prints only the first sentence).
const LOST_DATA_HINT: &str = "its data dir was lost or replaced, and a member that forgot its log and votes must not rejoin (it could vote twice in one term). To bring it back: `etcdctl member remove <id>`, then `etcdctl member add <name> --peer-urls=<its peer URLs>`, then start it with an empty data dir and --initial-cluster-state existing";

/// Why a member refuses to start. Each message is the clustering guide's where the guide has
/// one (etcd-facts §4 **Decision**), else etcd 3.4's. All of them exit with status 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    /// `--name` is not among the `--initial-cluster` names.
    #[error("{name} not listed in the initial cluster config")]
    NotListed { name: String },
    /// `--initial-advertise-peer-urls` and this member's `--initial-cluster` entry differ after
    /// name resolution. `detail` is etcd 3.4's explanation of the difference.
    #[error(
        "error setting up initial cluster: {name} has different advertised URLs in the cluster and advertised peer URLs list: {detail}"
    )]
    AdvertiseMismatch { name: String, detail: String },
    /// The same peer URL appears twice in `--initial-cluster`; `cluster` is the initial cluster
    /// formatted as etcd prints it (sorted `name=url` pairs).
    #[error("initial cluster {cluster} has duplicate url")]
    DuplicateUrl { cluster: String },
    /// A peer belongs to another cluster. Raised by the net layer on the peer handshake.
    #[error("conflicting cluster ID to the target cluster ({} != {}). Exiting.", format_id(*.local), format_id(*.peer))]
    ConflictingClusterId { local: u64, peer: u64 },
    /// A member with an empty data dir whose ID the running cluster already saw start (it
    /// published its client URLs): its data dir was lost. etcd's message, then a hint.
    #[error("member {} has already been bootstrapped: {LOST_DATA_HINT}", format_id(*.0))]
    AlreadyBootstrapped(u64),
    /// Joining: no listed peer answered with its member list (etcd's message).
    #[error("cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs")]
    NoRemoteCluster,
    /// Joining: --initial-cluster and the running cluster list different numbers of members
    /// (etcd's ValidateClusterAndAssignIDs).
    #[error("error validating peerURLs {remote}: member count is unequal")]
    MemberCountUnequal { remote: String },
    /// Joining: a running member's peer URLs are not in --initial-cluster.
    #[error("error validating peerURLs {remote}: PeerURLs: no match found for existing member ({}, [{}])", format_id(*.id), .urls.join(" "))]
    NoPeerUrlMatch {
        remote: String,
        id: u64,
        urls: Vec<String>,
    },
    /// The data dir belongs to a member that was removed from its cluster.
    #[error("the member has been permanently removed from the cluster (member {}); remove its data dir, then add it again with `etcdctl member add` and start it with --initial-cluster-state existing", format_id(*.0))]
    Removed(u64),
}

/// Decides how this member starts. `resolve` maps a host name to its addresses (an empty
/// answer means "could not resolve": the name is then compared as written); IP literals are
/// never passed to it.
pub fn decide(
    cfg: &Config,
    data_dir: DataDirState,
    resolve: &dyn Fn(&str) -> Vec<IpAddr>,
) -> Result<Bootstrap, BootstrapError> {
    if data_dir == DataDirState::HasLog {
        return Ok(Bootstrap::Restart);
    }
    let local = cfg
        .initial_cluster
        .iter()
        .find(|m| m.name == cfg.name)
        .ok_or_else(|| BootstrapError::NotListed {
            name: cfg.name.clone(),
        })?;
    check_advertise_matches(local, &cfg.initial_advertise_peer_urls, resolve)?;
    check_duplicate_urls(&cfg.initial_cluster)?;

    let members: Vec<BootstrapMember> = cfg
        .initial_cluster
        .iter()
        .map(|m| BootstrapMember {
            id: ids::member_id(&m.peer_urls, &cfg.initial_cluster_token, None),
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
        })
        .collect();
    if cfg.initial_cluster_state == ClusterState::Existing {
        return Ok(Bootstrap::Join {
            local_name: cfg.name.clone(),
            members,
        });
    }
    let member_ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let local_id = members
        .iter()
        .find(|m| m.name == cfg.name)
        .map(|m| m.id)
        .expect("local member listed");
    Ok(Bootstrap::NewCluster {
        cluster_id: ids::cluster_id(&member_ids),
        local_id,
        members,
    })
}

/// Checks a member of a new cluster against what its running peers answered, before it
/// writes anything: a peer of another cluster is the guide's "conflicting cluster ID", and a
/// cluster that already saw this member start means its data dir was lost (etcd's
/// isMemberBootstrapped). Peers that did not answer are not in `remotes`: in a new cluster
/// they are starting too.
pub fn check_new_member(
    local_id: u64,
    cluster_id: u64,
    remotes: &[RemoteCluster],
) -> Result<(), BootstrapError> {
    for r in remotes {
        if r.cluster_id != cluster_id {
            return Err(BootstrapError::ConflictingClusterId {
                local: cluster_id,
                peer: r.cluster_id,
            });
        }
    }
    check_not_started(local_id, remotes)
}

/// A member the cluster knows as started (it published client URLs) must not start afresh.
fn check_not_started(local_id: u64, remotes: &[RemoteCluster]) -> Result<(), BootstrapError> {
    let started = remotes.iter().any(|r| {
        r.members
            .iter()
            .any(|m| m.id == local_id && !m.client_urls.is_empty())
    });
    if started {
        return Err(BootstrapError::AlreadyBootstrapped(local_id));
    }
    Ok(())
}

/// Plans joining the running cluster `remote` (the first listed peer that answered) as the
/// member `local_name` of --initial-cluster `members` (etcd's ValidateClusterAndAssignIDs):
/// the two must list the same number of members, and each running member's peer URLs must
/// be some --initial-cluster entry's (compared as sorted URL strings; names are not
/// compared). The local member takes the ID of the running member it matched, the one
/// `member add` gave it, which must not have started before (a lost data dir).
pub fn plan_join(
    local_name: &str,
    members: &[BootstrapMember],
    remote: &RemoteCluster,
) -> Result<JoinPlan, BootstrapError> {
    let described = describe_remote(remote);
    if remote.members.len() != members.len() {
        return Err(BootstrapError::MemberCountUnequal { remote: described });
    }
    let url_set = |urls: Vec<String>| {
        let mut v = urls;
        v.sort();
        v.dedup();
        v
    };
    let mut local_id = None;
    for existing in &remote.members {
        let want = url_set(existing.peer_urls.clone());
        let matched = members
            .iter()
            .find(|m| url_set(m.peer_urls.iter().map(|u| u.to_string()).collect()) == want);
        match matched {
            Some(m) if m.name == local_name => local_id = Some(existing.id),
            Some(_) => {}
            None => {
                return Err(BootstrapError::NoPeerUrlMatch {
                    remote: described,
                    id: existing.id,
                    urls: existing.peer_urls.clone(),
                })
            }
        }
    }
    // decide() checked the local name is listed, and every running member matched an entry.
    let local_id = local_id.ok_or_else(|| BootstrapError::NotListed {
        name: local_name.to_string(),
    })?;
    check_not_started(local_id, std::slice::from_ref(remote))?;
    Ok(JoinPlan {
        cluster_id: remote.cluster_id,
        local_id,
        members: remote.members.clone(),
        removed: remote.removed.clone(),
    })
}

/// A running cluster as etcd prints it in join errors (its RaftCluster's String).
fn describe_remote(r: &RemoteCluster) -> String {
    let members: Vec<String> = r
        .members
        .iter()
        .map(|m| {
            format!(
                "&{{ID:{} RaftAttributes:{{PeerURLs:[{}] IsLearner:{}}} Attributes:{{Name:{} ClientURLs:[{}]}}}}",
                format_id(m.id),
                m.peer_urls.join(" "),
                m.is_learner,
                m.name,
                m.client_urls.join(" ")
            )
        })
        .collect();
    let removed: Vec<String> = r.removed.iter().map(|id| format_id(*id)).collect();
    format!(
        "{{ClusterID:{} Members:[{}] RemovedMemberIDs:[{}]}}",
        format_id(r.cluster_id),
        members.join(" "),
        removed.join(" ")
    )
}

/// A host as compared: an IP address, or a name that did not resolve (compared as written).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) if name.contains(':') => write!(f, "[{name}]"),
            Host::Name(name) => write!(f, "{name}"),
        }
    }
}

/// A URL after name resolution: every address its host stands for.
struct Resolved<'a> {
    url: &'a Url,
    hosts: BTreeSet<Host>,
    /// The first address, for messages (as etcd shows the one address Go's resolver picked).
    first: Host,
}

impl Resolved<'_> {
    fn matches(&self, other: &Resolved<'_>) -> bool {
        self.url.scheme == other.url.scheme
            && self.url.port == other.url.port
            && self.hosts.intersection(&other.hosts).next().is_some()
    }

    fn resolved_string(&self) -> String {
        format!(
            "{}://{}:{}",
            self.url.scheme.as_str(),
            self.first,
            self.url.port
        )
    }
}

fn resolve_url<'a>(url: &'a Url, resolve: &dyn Fn(&str) -> Vec<IpAddr>) -> Resolved<'a> {
    let addrs: Vec<Host> = match url.ip() {
        Some(ip) => vec![Host::Ip(ip)],
        // etcd's resolveURL: unix sockets are compared as written, never resolved.
        None if url.scheme.is_unix() => Vec::new(),
        None => resolve(&url.host).into_iter().map(Host::Ip).collect(),
    };
    let first = addrs
        .first()
        .cloned()
        .unwrap_or_else(|| Host::Name(url.host.clone()));
    let mut hosts: BTreeSet<Host> = addrs.into_iter().collect();
    if hosts.is_empty() {
        hosts.insert(Host::Name(url.host.clone()));
    }
    Resolved { url, hosts, first }
}

/// Compares `--initial-advertise-peer-urls` with the local `--initial-cluster` entry as sets of
/// (scheme, address, port): two URLs are the same when scheme and port are equal and their
/// hosts share an address. On a mismatch the detail follows etcd 3.4's `advertiseMatchesCluster`.
fn check_advertise_matches(
    local: &InitialMember,
    advertised: &[Url],
    resolve: &dyn Fn(&str) -> Vec<IpAddr>,
) -> Result<(), BootstrapError> {
    let ap: Vec<Resolved<'_>> = advertised.iter().map(|u| resolve_url(u, resolve)).collect();
    let ic: Vec<Resolved<'_>> = local
        .peer_urls
        .iter()
        .map(|u| resolve_url(u, resolve))
        .collect();
    let missing_from_ap: Vec<&Resolved<'_>> = ic
        .iter()
        .filter(|c| !ap.iter().any(|a| a.matches(c)))
        .collect();
    let missing_from_ic: Vec<&Resolved<'_>> = ap
        .iter()
        .filter(|a| !ic.iter().any(|c| c.matches(a)))
        .collect();
    if missing_from_ap.is_empty() && missing_from_ic.is_empty() {
        return Ok(());
    }

    let mut ap_strs: Vec<String> = advertised.iter().map(|u| u.to_string()).collect();
    ap_strs.sort();
    let local_entry = format_initial_cluster(std::slice::from_ref(local));
    let detail = if !missing_from_ap.is_empty() {
        let missing: Vec<String> = missing_from_ap
            .iter()
            .map(|r| format!("{}={}", local.name, r.url))
            .collect();
        format!(
            "--initial-cluster has {} but missing from --initial-advertise-peer-urls={} ({})",
            missing.join(","),
            ap_strs.join(","),
            mismatch_cause(&ap, &ic)
        )
    } else {
        let missing: Vec<String> = missing_from_ic.iter().map(|r| r.url.to_string()).collect();
        format!(
            "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
            missing.join(","),
            local_entry
        )
    };
    Err(BootstrapError::AdvertiseMismatch {
        name: local.name.clone(),
        detail,
    })
}

/// etcd's `URLStringsEqual` explanation: the lengths, or the first pair that differs once
/// both sides are resolved and sorted.
fn mismatch_cause(ap: &[Resolved<'_>], ic: &[Resolved<'_>]) -> String {
    let quoted = |rs: &[Resolved<'_>]| {
        let mut v: Vec<String> = rs
            .iter()
            .map(|r| format!("{:?}", r.url.to_string()))
            .collect();
        v.sort();
        format!("[{}]", v.join(" "))
    };
    if ap.len() != ic.len() {
        return format!("len({}) != len({})", quoted(ap), quoted(ic));
    }
    let sorted = |rs: &[Resolved<'_>]| {
        let mut v: Vec<(String, String)> = rs
            .iter()
            .map(|r| (r.resolved_string(), r.url.to_string()))
            .collect();
        v.sort();
        v
    };
    let (a, b) = (sorted(ap), sorted(ic));
    let (ra, oa, rb, ob) = a
        .iter()
        .zip(&b)
        .find(|(x, y)| x.0 != y.0)
        .map(|(x, y)| (&x.0, &x.1, &y.0, &y.1))
        .unwrap_or((&a[0].0, &a[0].1, &b[0].0, &b[0].1));
    format!("{ra:?}(resolved from {oa:?}) != {rb:?}(resolved from {ob:?})")
}

/// etcd's `checkDuplicateURL`: a peer URL (as a string) listed twice anywhere.
fn check_duplicate_urls(cluster: &[InitialMember]) -> Result<(), BootstrapError> {
    let mut seen = BTreeSet::new();
    for url in cluster.iter().flat_map(|m| &m.peer_urls) {
        if !seen.insert(url.to_string()) {
            return Err(BootstrapError::DuplicateUrl {
                cluster: format_initial_cluster(cluster),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_initial_cluster, parse_urls};

    const GUIDE_CLUSTER: &str =
        "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380";
    const LOOPBACK_CLUSTER: &str =
        "infra0=http://127.0.1.10:2380,infra1=http://127.0.1.11:2380,infra2=http://127.0.1.12:2380";

    /// The test resolver: the guide's host names, `localhost`, and a name with two addresses.
    fn table(host: &str) -> Vec<IpAddr> {
        let ips: &[&str] = match host {
            "localhost" => &["127.0.0.1", "::1"],
            "infra0.example.com" => &["10.0.1.10"],
            "infra1.example.com" => &["10.0.1.11"],
            "infra2.example.com" => &["10.0.1.12"],
            "multi.example.com" => &["10.0.9.1", "10.0.1.10"],
            _ => &[],
        };
        ips.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn cfg(name: &str, advertise: &str, cluster: &str, token: &str) -> Config {
        Config {
            name: name.to_string(),
            initial_advertise_peer_urls: parse_urls(advertise).unwrap(),
            initial_cluster: parse_initial_cluster(cluster).unwrap(),
            initial_cluster_token: token.to_string(),
            ..Config::default()
        }
    }

    fn new_cluster(c: &Config) -> (String, String, Vec<(String, String)>) {
        match decide(c, DataDirState::Empty, &table) {
            Ok(Bootstrap::NewCluster {
                cluster_id,
                local_id,
                members,
            }) => (
                format_id(cluster_id),
                format_id(local_id),
                members
                    .into_iter()
                    .map(|m| (m.name, format_id(m.id)))
                    .collect(),
            ),
            other => panic!("expected a new cluster, got {other:?}"),
        }
    }

    fn err(c: &Config) -> String {
        decide(c, DataDirState::Empty, &table)
            .expect_err("expected an error")
            .to_string()
    }

    #[test]
    fn guide_three_members_give_the_vector_ids() {
        let names = [
            ("infra0", "2029998aabe7a1e"),
            ("infra1", "e649a9c81f668aa5"),
            ("infra2", "3a557c8ef1cd433d"),
        ];
        for (i, (name, id)) in names.iter().enumerate() {
            let c = cfg(
                name,
                &format!("http://127.0.1.1{i}:2380"),
                LOOPBACK_CLUSTER,
                "etcd-cluster-1",
            );
            let (cluster, local, members) = new_cluster(&c);
            assert_eq!(cluster, "c8f9219ce82804b2");
            assert_eq!(local, *id);
            let want: Vec<(String, String)> = names
                .iter()
                .map(|(n, i)| (n.to_string(), i.to_string()))
                .collect();
            assert_eq!(members, want);
        }
    }

    #[test]
    fn default_config_gives_the_default_ids() {
        let (cluster, local, members) = new_cluster(&Config::default());
        assert_eq!(
            (cluster.as_str(), local.as_str()),
            ("cdf818194e3a8c32", "8e9e05c52164694d")
        );
        assert_eq!(
            members,
            vec![("default".to_string(), "8e9e05c52164694d".to_string())]
        );
    }

    #[test]
    fn member_details_are_kept() {
        let c = cfg(
            "infra1",
            "http://10.0.1.11:2380",
            GUIDE_CLUSTER,
            "etcd-cluster-1",
        );
        let Ok(Bootstrap::NewCluster {
            members, local_id, ..
        }) = decide(&c, DataDirState::Empty, &table)
        else {
            panic!()
        };
        assert_eq!(members[1].name, "infra1");
        assert_eq!(
            members[1].peer_urls,
            parse_urls("http://10.0.1.11:2380").unwrap()
        );
        assert_eq!(members[1].id, local_id);
        assert_eq!(
            local_id,
            ids::member_id(&members[1].peer_urls, "etcd-cluster-1", None)
        );
    }

    #[test]
    fn restart_ignores_every_initial_flag() {
        let broken = [
            cfg("infra9", "http://10.0.1.13:2380", GUIDE_CLUSTER, "t"),
            cfg("infra0", "http://127.0.0.1:2380", GUIDE_CLUSTER, "t"),
            Config {
                initial_cluster_state: ClusterState::Existing,
                ..Config::default()
            },
            Config::default(),
        ];
        for c in &broken {
            assert_eq!(
                decide(c, DataDirState::HasLog, &table),
                Ok(Bootstrap::Restart)
            );
        }
    }

    #[test]
    fn not_listed() {
        // The guide's example.
        let c = cfg(
            "infra1",
            "http://10.0.1.11:2380",
            "infra0=http://10.0.1.10:2380",
            "etcd-cluster",
        );
        assert_eq!(err(&c), "infra1 not listed in the initial cluster config");
        let c = cfg("infra1", "http://10.0.1.11:2380", "", "etcd-cluster");
        assert_eq!(err(&c), "infra1 not listed in the initial cluster config");
        // --name changed but --initial-cluster left at its default.
        let c = Config {
            name: "infra1".into(),
            ..Config::default()
        };
        assert_eq!(
            decide(&c, DataDirState::Empty, &table),
            Err(BootstrapError::NotListed {
                name: "infra1".into()
            })
        );
    }

    #[test]
    fn advertise_mismatch() {
        // The guide's example: advertised 127.0.0.1 while the cluster lists 10.0.1.10.
        let c = cfg(
            "infra0",
            "http://127.0.0.1:2380",
            GUIDE_CLUSTER,
            "etcd-cluster",
        );
        assert_eq!(
            err(&c),
            "error setting up initial cluster: infra0 has different advertised URLs in the cluster and advertised peer URLs list: \
             --initial-cluster has infra0=http://10.0.1.10:2380 but missing from --initial-advertise-peer-urls=http://127.0.0.1:2380 \
             (\"http://127.0.0.1:2380\"(resolved from \"http://127.0.0.1:2380\") != \"http://10.0.1.10:2380\"(resolved from \"http://10.0.1.10:2380\"))"
        );
        // An extra advertised URL not in the cluster.
        let c = cfg(
            "infra0",
            "http://10.0.1.10:2380,http://10.0.1.10:2381",
            GUIDE_CLUSTER,
            "etcd-cluster",
        );
        assert_eq!(
            err(&c),
            "error setting up initial cluster: infra0 has different advertised URLs in the cluster and advertised peer URLs list: \
             --initial-advertise-peer-urls has http://10.0.1.10:2381 but missing from --initial-cluster=infra0=http://10.0.1.10:2380"
        );
        // A cluster URL missing from fewer advertised URLs: etcd's length explanation.
        let cluster = "infra0=http://10.0.1.10:2380,infra0=http://10.0.2.10:2380,infra1=http://10.0.1.11:2380";
        let c = cfg("infra0", "http://10.0.1.10:2380", cluster, "etcd-cluster");
        assert_eq!(
            err(&c),
            "error setting up initial cluster: infra0 has different advertised URLs in the cluster and advertised peer URLs list: \
             --initial-cluster has infra0=http://10.0.2.10:2380 but missing from --initial-advertise-peer-urls=http://10.0.1.10:2380 \
             (len([\"http://10.0.1.10:2380\"]) != len([\"http://10.0.1.10:2380\" \"http://10.0.2.10:2380\"]))"
        );
        // Scheme and port count.
        let c = cfg(
            "infra0",
            "https://10.0.1.10:2380",
            GUIDE_CLUSTER,
            "etcd-cluster",
        );
        assert!(matches!(
            decide(&c, DataDirState::Empty, &table),
            Err(BootstrapError::AdvertiseMismatch { .. })
        ));
        let c = cfg(
            "infra0",
            "http://10.0.1.10:2381",
            GUIDE_CLUSTER,
            "etcd-cluster",
        );
        assert!(matches!(
            decide(&c, DataDirState::Empty, &table),
            Err(BootstrapError::AdvertiseMismatch { .. })
        ));
        // A name that resolves elsewhere, with the resolved address in the detail.
        let c = cfg(
            "infra0",
            "http://infra1.example.com:2380",
            GUIDE_CLUSTER,
            "etcd-cluster",
        );
        assert!(err(&c).ends_with(
            "(\"http://10.0.1.11:2380\"(resolved from \"http://infra1.example.com:2380\") != \"http://10.0.1.10:2380\"(resolved from \"http://10.0.1.10:2380\"))"
        ));
        // An unresolvable name is compared as written.
        let c = cfg(
            "infra0",
            "http://nowhere.invalid:2380",
            GUIDE_CLUSTER,
            "etcd-cluster",
        );
        assert!(matches!(
            decide(&c, DataDirState::Empty, &table),
            Err(BootstrapError::AdvertiseMismatch { .. })
        ));
    }

    #[test]
    fn advertise_matches_after_resolution() {
        let cases: &[(&str, &str, &str)] = &[
            // Advertised name, cluster IP.
            ("infra0", "http://infra0.example.com:2380", GUIDE_CLUSTER),
            // Advertised IP, cluster names.
            (
                "infra1",
                "http://10.0.1.11:2380",
                "infra0=http://infra0.example.com:2380,infra1=http://infra1.example.com:2380",
            ),
            // A name with several addresses matches any of them.
            ("infra0", "http://multi.example.com:2380", GUIDE_CLUSTER),
            // localhost resolves like any other name.
            ("default", "http://127.0.0.1:2380", "default=http://localhost:2380"),
            ("default", "http://[::1]:2380", "default=http://localhost:2380"),
            // Same unresolvable name on both sides.
            ("n", "http://nowhere.invalid:2380", "n=http://nowhere.invalid:2380"),
            // Several URLs, in any order.
            (
                "infra0",
                "http://10.0.1.10:2380,http://infra0.example.com:7001",
                "infra0=http://10.0.1.10:7001,infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380",
            ),
        ];
        for &(name, ap, cluster) in cases {
            let c = cfg(name, ap, cluster, "etcd-cluster");
            assert!(
                matches!(
                    decide(&c, DataDirState::Empty, &table),
                    Ok(Bootstrap::NewCluster { .. })
                ),
                "{name} {ap} {cluster}: {:?}",
                decide(&c, DataDirState::Empty, &table)
            );
        }
        // IDs hash the URLs as written in --initial-cluster, not the advertised spelling.
        let by_name = cfg(
            "infra0",
            "http://infra0.example.com:2380",
            LOOPBACK_CLUSTER
                .replace("127.0.1.10", "infra0.example.com")
                .as_str(),
            "t",
        );
        let Ok(Bootstrap::NewCluster { local_id, .. }) =
            decide(&by_name, DataDirState::Empty, &table)
        else {
            panic!()
        };
        assert_eq!(
            local_id,
            ids::member_id(
                &parse_urls("http://infra0.example.com:2380").unwrap(),
                "t",
                None
            )
        );
    }

    #[test]
    fn duplicate_url() {
        let cluster = "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.10:2380";
        let c = cfg("infra0", "http://10.0.1.10:2380", cluster, "etcd-cluster");
        assert_eq!(
            err(&c),
            "initial cluster infra0=http://10.0.1.10:2380,infra1=http://10.0.1.10:2380 has duplicate url"
        );
        // Also within one member listed twice with the same URL.
        let cluster = "infra1=http://10.0.1.11:2380,infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380";
        let c = cfg("infra0", "http://10.0.1.10:2380", cluster, "etcd-cluster");
        assert_eq!(
            err(&c),
            "initial cluster infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra1=http://10.0.1.11:2380 has duplicate url"
        );
    }

    #[test]
    fn checks_run_in_etcds_order() {
        // Not listed wins over a duplicate URL; an advertise mismatch wins over a duplicate URL.
        let dup = "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.10:2380";
        assert!(matches!(
            decide(
                &cfg("infra9", "http://10.0.1.10:2380", dup, "t"),
                DataDirState::Empty,
                &table
            ),
            Err(BootstrapError::NotListed { .. })
        ));
        assert!(matches!(
            decide(
                &cfg("infra0", "http://10.0.1.99:2380", dup, "t"),
                DataDirState::Empty,
                &table
            ),
            Err(BootstrapError::AdvertiseMismatch { .. })
        ));
    }

    fn joining(name: &str, url: &str, cluster: &str) -> (String, Vec<BootstrapMember>) {
        let c = Config {
            initial_cluster_state: ClusterState::Existing,
            ..cfg(name, url, cluster, "etcd-cluster-1")
        };
        match decide(&c, DataDirState::Empty, &table) {
            Ok(Bootstrap::Join {
                local_name,
                members,
            }) => (local_name, members),
            other => panic!("not a join: {other:?}"),
        }
    }

    fn running(members: &[(u64, &str, &str)]) -> RemoteCluster {
        RemoteCluster {
            cluster_id: 0xc1,
            members: members
                .iter()
                .map(|(id, url, client)| MemberRecord {
                    id: *id,
                    peer_urls: vec![url.to_string()],
                    client_urls: [client]
                        .iter()
                        .filter(|c| !c.is_empty())
                        .map(|c| c.to_string())
                        .collect(),
                    name: if client.is_empty() { "" } else { "m" }.into(),
                    is_learner: false,
                })
                .collect(),
            removed: vec![9],
        }
    }

    const FOUR: &str = "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,\
infra2=http://10.0.1.12:2380,infra3=http://10.0.1.13:2380";

    #[test]
    fn joining_takes_the_id_member_add_gave_it() {
        let (name, members) = joining("infra3", "http://10.0.1.13:2380", FOUR);
        let remote = running(&[
            (1, "http://10.0.1.10:2380", "http://10.0.1.10:2379"),
            (2, "http://10.0.1.11:2380", "http://10.0.1.11:2379"),
            (3, "http://10.0.1.12:2380", "http://10.0.1.12:2379"),
            (77, "http://10.0.1.13:2380", ""),
        ]);
        let plan = plan_join(&name, &members, &remote).unwrap();
        assert_eq!(plan.local_id, 77);
        assert_eq!(plan.cluster_id, 0xc1);
        assert_eq!(plan.members.len(), 4);
        assert_eq!(plan.removed, vec![9]);
    }

    #[test]
    fn join_errors_are_etcds() {
        let (name, members) = joining("infra3", "http://10.0.1.13:2380", FOUR);
        let three = running(&[
            (1, "http://10.0.1.10:2380", "x"),
            (2, "http://10.0.1.11:2380", "x"),
            (3, "http://10.0.1.12:2380", "x"),
        ]);
        let e = plan_join(&name, &members, &three).unwrap_err().to_string();
        assert!(
            e.starts_with("error validating peerURLs {ClusterID:c1 Members:[&{ID:1 "),
            "{e}"
        );
        assert!(
            e.ends_with("RemovedMemberIDs:[9]}: member count is unequal"),
            "{e}"
        );

        let other = running(&[
            (1, "http://10.0.1.10:2380", "x"),
            (2, "http://10.0.1.11:2380", "x"),
            (3, "http://10.0.1.12:2380", "x"),
            (77, "http://10.0.1.99:2380", ""),
        ]);
        let e = plan_join(&name, &members, &other).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "PeerURLs: no match found for existing member (4d, [http://10.0.1.99:2380])"
            ),
            "{e}"
        );

        let started = running(&[
            (1, "http://10.0.1.10:2380", "x"),
            (2, "http://10.0.1.11:2380", "x"),
            (3, "http://10.0.1.12:2380", "x"),
            (77, "http://10.0.1.13:2380", "http://10.0.1.13:2379"),
        ]);
        assert_eq!(
            plan_join(&name, &members, &started),
            Err(BootstrapError::AlreadyBootstrapped(77))
        );
    }

    #[test]
    fn a_new_member_the_cluster_saw_start_is_refused() {
        let remote = running(&[(1, "http://10.0.1.10:2380", "http://10.0.1.10:2379")]);
        let e = check_new_member(1, 0xc1, std::slice::from_ref(&remote)).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("member 1 has already been bootstrapped: "));
        // Known but never started (a new cluster still forming): fine.
        let forming = running(&[(1, "http://10.0.1.10:2380", "")]);
        assert_eq!(check_new_member(1, 0xc1, &[forming]), Ok(()));
        assert_eq!(
            check_new_member(1, 0xc2, &[remote]),
            Err(BootstrapError::ConflictingClusterId {
                local: 0xc2,
                peer: 0xc1
            })
        );
        assert_eq!(check_new_member(1, 0xc1, &[]), Ok(()));
    }

    #[test]
    fn conflicting_cluster_id_message() {
        let e = BootstrapError::ConflictingClusterId {
            local: 0xc6ab534d07e8fcc4,
            peer: 0xbc25ea2a74fb18b0,
        };
        assert_eq!(e.to_string(), "conflicting cluster ID to the target cluster (c6ab534d07e8fcc4 != bc25ea2a74fb18b0). Exiting.");
        let e = BootstrapError::ConflictingClusterId {
            local: 0x2029998aabe7a1e,
            peer: 1,
        };
        assert_eq!(
            e.to_string(),
            "conflicting cluster ID to the target cluster (2029998aabe7a1e != 1). Exiting."
        );
    }

    #[test]
    fn resolver_is_not_asked_about_ip_literals() {
        let c = cfg(
            "infra0",
            "http://10.0.1.10:2380",
            GUIDE_CLUSTER,
            "etcd-cluster",
        );
        let ask = |h: &str| -> Vec<IpAddr> { panic!("asked to resolve {h}") };
        assert!(matches!(
            decide(&c, DataDirState::Empty, &ask),
            Ok(Bootstrap::NewCluster { .. })
        ));
    }
}
