//! DNS SRV discovery, pure: the SRV names to ask for, and the initial cluster built from
//! the answers (etcd-facts §7). The net layer (or the simulator) performs the lookups and hands
//! their results in as [`SrvLookups`]; nothing here touches the network.
//!
//! The rules copy etcd's `pkg/srv/srv.go` (`GetCluster`, `GetSRVService`) and, for combining
//! the `_etcd-server-ssl` and `_etcd-server` answers, etcd 3.5's `embed/config.go`
//! (`GetDNSClusterNames`, `PeerURLsMapAndToken`): both services are asked, whichever answered
//! contributes members, and only when neither did is discovery an error (etcd 3.4 dropped the
//! plain records when the ssl lookup failed, issue 11321, so the guide's own example failed).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::{parse_initial_cluster, InitialMember, Scheme, Url};

/// One SRV answer (RFC 2782), as the resolver returned it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host name, with or without its trailing dot.
    pub target: String,
}

/// The answers to one SRV question: the records, or the resolver's reason for having none.
pub type SrvAnswer = Result<Vec<SrvRecord>, String>;

/// Host name resolutions: host (as written in a URL or an SRV target) to its addresses, or the
/// resolver's reason for having none. A host missing from the map counts as unresolvable.
pub type HostAddrs = BTreeMap<String, Result<Vec<IpAddr>, String>>;

/// Everything the lookups of a server's SRV bootstrap found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvLookups {
    /// `_etcd-server-ssl[-<name>]._tcp.<domain>`.
    pub ssl: SrvAnswer,
    /// `_etcd-server[-<name>]._tcp.<domain>`.
    pub plain: SrvAnswer,
    /// Addresses of every SRV target and of every advertised peer URL host that is not an IP.
    pub hosts: HostAddrs,
}

/// etcd's `GetSRVService`: `service`, `-ssl` appended for https, then `-<srv_name>` if any.
/// `service` is `etcd-server` or `etcd-client`.
pub fn srv_service(service: &str, srv_name: &str, scheme: Scheme) -> String {
    let mut s = service.to_string();
    if scheme == Scheme::Https {
        s.push_str("-ssl");
    }
    if !srv_name.is_empty() {
        s.push('-');
        s.push_str(srv_name);
    }
    s
}

/// The DNS name asked for a service: `_<service>._tcp.<domain>` (Go's `LookupSRV` form).
pub fn srv_query_name(service: &str, domain: &str) -> String {
    format!("_{service}._tcp.{domain}")
}

/// The hosts whose addresses [`cluster_from_srv`] needs: the records' targets and the
/// advertised peer URL hosts that are names (IP literals are never looked up).
pub fn hosts_to_resolve(
    lookups_ssl: &SrvAnswer,
    lookups_plain: &SrvAnswer,
    advertised: &[Url],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |h: &str| {
        let h = h.trim_end_matches('.');
        if !h.is_empty() && h.parse::<IpAddr>().is_err() && !out.iter().any(|o| o == h) {
            out.push(h.to_string());
        }
    };
    for u in advertised {
        add(&u.host);
    }
    for records in [lookups_ssl, lookups_plain].into_iter().flatten() {
        for r in records {
            add(&r.target);
        }
    }
    out
}

/// The initial cluster SRV discovery found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvCluster {
    /// In etcd's order (ssl members first, each service's records in answer order); the local
    /// member is named `--name`, the others `0`, `1`, ... per service, as etcd names them.
    pub members: Vec<InitialMember>,
    /// The `name=url` pairs as etcd logs them ("got bootstrap from DNS for etcd-server").
    pub pairs: Vec<String>,
    /// The TLS server name to expect from every peer: the SRV domain, when the cluster has
    /// https members and no `--peer-trusted-ca-file` was given (etcd sets
    /// `PeerTLSInfo.ServerName`); `None` means each peer's own host name.
    pub peer_server_name: Option<String>,
    /// Why a service contributed nothing (its lookup failed or no record was usable), for
    /// the log: etcd logs these at info level and goes on with the other service.
    pub notes: Vec<String>,
}

/// Why SRV discovery gave no usable cluster. Each exits 1 with etcd's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrvError {
    /// Neither service gave a usable record: etcd 3.5's combined error (`; `-separated, each
    /// `error querying DNS SRV records for _<service> <reason>`).
    #[error("{0}")]
    Query(String),
    /// An advertised peer URL's host did not resolve (etcd returns the resolver's error).
    #[error("{0}")]
    Advertised(String),
    /// This member's record uses the other scheme than its advertised peer URL (etcd's message).
    #[error("bootstrap at {found} from DNS for {service} has scheme mismatch with expected peer {expected}")]
    SchemeMismatch {
        found: String,
        service: String,
        expected: String,
    },
    /// No record resolves to one of this member's advertised peer URLs.
    #[error("cannot find local etcd member {0:?} in SRV records")]
    LocalNotFound(String),
    /// A record that made an unusable member list (e.g. the same name twice with bad URLs).
    #[error("error parsing the cluster found in SRV records: {0}")]
    Parse(String),
}

/// The address Go's `net.ResolveTCPAddr` picks for a host: the first IPv4 address, else the
/// first address.
fn preferred(addrs: &[IpAddr]) -> Option<IpAddr> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

fn resolve(host: &str, hosts: &HostAddrs) -> Result<IpAddr, String> {
    let host = host.trim_end_matches('.');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let answer = hosts
        .get(host)
        .or_else(|| hosts.get(&format!("{host}.")))
        .cloned()
        .unwrap_or_else(|| Err(format!("lookup {host}: no such host")));
    let addrs = answer?;
    preferred(&addrs).ok_or_else(|| format!("lookup {host}: no such host"))
}

/// One service's part (etcd's `srv.GetCluster` for one service and scheme).
struct ServicePart {
    pairs: Vec<String>,
    /// The mismatch error seen for this member's own record, if any.
    mismatch: Option<SrvError>,
}

fn one_service(
    scheme: Scheme,
    service: &str,
    local_name: &str,
    ap: &BTreeMap<(IpAddr, u16), &Url>,
    answer: &SrvAnswer,
    hosts: &HostAddrs,
) -> Result<ServicePart, String> {
    let query_err = |why: &str| format!("error querying DNS SRV records for _{service} {why}");
    let records = answer.as_ref().map_err(|e| query_err(e))?;
    // Go's LookupSRV sorts by priority (and shuffles by weight); detcd orders the ties by
    // target and port so every member names the others alike.
    let mut records: Vec<&SrvRecord> = records.iter().collect();
    records.sort_by(|a, b| (a.priority, &a.target, a.port).cmp(&(b.priority, &b.target, b.port)));
    let mut temp_name = 0usize;
    let mut last_err: Option<String> = None;
    let mut part = ServicePart {
        pairs: Vec::new(),
        mismatch: None,
    };
    for r in records {
        let short = r.target.trim_end_matches('.');
        if short.is_empty() {
            // RFC 2782: a target of "." means the service is not available here.
            last_err = Some("lookup .: the service is decidedly not available".into());
            continue;
        }
        let addr = match resolve(short, hosts) {
            Ok(a) => a,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let url_host = if short.contains(':') {
            format!("[{short}]:{}", r.port)
        } else {
            format!("{short}:{}", r.port)
        };
        let found = format!("{}://{url_host}", scheme.as_str());
        // A target that makes no valid URL (network input) is skipped like an unresolvable one.
        if let Err(e) = Url::parse(&found) {
            last_err = Some(e.to_string());
            continue;
        }
        match ap.get(&(addr, r.port)) {
            Some(u) if u.scheme != scheme => {
                let e = SrvError::SchemeMismatch {
                    found,
                    service: service.to_string(),
                    expected: u.to_string(),
                };
                last_err = Some(e.to_string());
                part.mismatch = Some(e);
            }
            Some(_) => part.pairs.push(format!("{local_name}={found}")),
            None => {
                part.pairs.push(format!("{temp_name}={found}"));
                temp_name += 1;
            }
        }
    }
    if part.pairs.is_empty() {
        let why = last_err.unwrap_or_else(|| "no SRV records".to_string());
        return Err(query_err(&why));
    }
    Ok(part)
}

/// Builds the initial cluster from SRV answers as etcd 3.5 does: each record's
/// `target:port` becomes `<scheme>://<target without trailing dot>:<port>`; the record whose
/// target resolves to the address and port of one of `advertised` (this member's
/// `--initial-advertise-peer-urls`, resolved too) gets `local_name`, the others `0`, `1`, ...
/// Records whose target does not resolve are skipped. `has_peer_ca` says whether
/// `--peer-trusted-ca-file` was given (see [`SrvCluster::peer_server_name`]).
///
/// Errors: [`SrvError::Advertised`] when an advertised host does not resolve;
/// [`SrvError::Query`] when neither service gave a member; [`SrvError::SchemeMismatch`] when
/// this member's own record carries the other scheme (etcd drops that record and then says
/// `cannot find local etcd member`; detcd names the cause); [`SrvError::LocalNotFound`].
pub fn cluster_from_srv(
    domain: &str,
    srv_name: &str,
    local_name: &str,
    advertised: &[Url],
    has_peer_ca: bool,
    lookups: &SrvLookups,
) -> Result<SrvCluster, SrvError> {
    let mut ap: BTreeMap<(IpAddr, u16), &Url> = BTreeMap::new();
    for u in advertised {
        let addr = resolve(&u.host, &lookups.hosts).map_err(SrvError::Advertised)?;
        ap.insert((addr, u.port), u);
    }
    let ssl_service = srv_service("etcd-server", srv_name, Scheme::Https);
    let plain_service = srv_service("etcd-server", srv_name, Scheme::Http);
    let ssl = one_service(
        Scheme::Https,
        &ssl_service,
        local_name,
        &ap,
        &lookups.ssl,
        &lookups.hosts,
    );
    let plain = one_service(
        Scheme::Http,
        &plain_service,
        local_name,
        &ap,
        &lookups.plain,
        &lookups.hosts,
    );
    let mut pairs = Vec::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    let mut mismatch = None;
    for part in [ssl, plain] {
        match part {
            Ok(p) => {
                pairs.extend(p.pairs);
                mismatch = mismatch.or(p.mismatch);
            }
            Err(e) => {
                notes.push(e.clone());
                errors.push(e);
            }
        }
    }
    if pairs.is_empty() {
        return Err(SrvError::Query(errors.join("; ")));
    }
    let members =
        parse_initial_cluster(&pairs.join(",")).map_err(|e| SrvError::Parse(e.to_string()))?;
    if !members.iter().any(|m| m.name == local_name) {
        return Err(mismatch.unwrap_or_else(|| SrvError::LocalNotFound(local_name.to_string())));
    }
    let https = members
        .iter()
        .any(|m| m.peer_urls.iter().any(|u| u.scheme == Scheme::Https));
    Ok(SrvCluster {
        members,
        pairs,
        peer_server_name: (https && !has_peer_ca).then(|| domain.to_string()),
        notes,
    })
}

/// The endpoints a client (or `etcd gateway --discovery-srv`) finds: etcd's `srv.GetClient`.
/// `https` are the `_etcd-client-ssl[-name]` records, `http` the `_etcd-client[-name]` ones;
/// each record becomes `scheme://target:port` (the target as the resolver gave it). Fails only
/// when both lookups failed, with etcd's `dns lookup errors: <ssl> and <plain>`.
pub fn client_endpoints(https: &SrvAnswer, http: &SrvAnswer) -> Result<Vec<Url>, String> {
    if let (Err(a), Err(b)) = (https, http) {
        return Err(format!("dns lookup errors: {a} and {b}"));
    }
    let mut out = Vec::new();
    for (scheme, answer) in [(Scheme::Https, https), (Scheme::Http, http)] {
        if let Ok(records) = answer {
            for r in records {
                let host = r.target.trim_end_matches('.');
                if host.is_empty() {
                    continue;
                }
                if let Ok(u) = Url::parse(&format!("{}://{host}:{}", scheme.as_str(), r.port)) {
                    out.push(u);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{format_initial_cluster, parse_urls};
    use crate::ids;

    fn rec(target: &str, port: u16) -> SrvRecord {
        SrvRecord {
            target: target.into(),
            port,
            ..SrvRecord::default()
        }
    }

    fn guide_records(port: u16) -> Vec<SrvRecord> {
        vec![
            rec("infra0.example.com.", port),
            rec("infra1.example.com.", port),
            rec("infra2.example.com.", port),
        ]
    }

    fn guide_hosts() -> HostAddrs {
        let mut h = HostAddrs::new();
        for i in 0..3 {
            h.insert(
                format!("infra{i}.example.com"),
                Ok(vec![format!("10.0.1.1{i}").parse().unwrap()]),
            );
        }
        h
    }

    fn plain_guide() -> SrvLookups {
        SrvLookups {
            ssl: Err("lookup _etcd-server-ssl._tcp.example.com: no such host".into()),
            plain: Ok(guide_records(2380)),
            hosts: guide_hosts(),
        }
    }

    fn build(name: &str, ap: &str, l: &SrvLookups) -> Result<SrvCluster, SrvError> {
        cluster_from_srv("example.com", "", name, &parse_urls(ap).unwrap(), false, l)
    }

    #[test]
    fn service_names_are_etcds() {
        assert_eq!(
            srv_service("etcd-server", "", Scheme::Https),
            "etcd-server-ssl"
        );
        assert_eq!(srv_service("etcd-server", "", Scheme::Http), "etcd-server");
        assert_eq!(
            srv_service("etcd-server", "foo", Scheme::Https),
            "etcd-server-ssl-foo"
        );
        assert_eq!(
            srv_service("etcd-client", "foo", Scheme::Http),
            "etcd-client-foo"
        );
        assert_eq!(
            srv_query_name("etcd-server-ssl-foo", "example.com"),
            "_etcd-server-ssl-foo._tcp.example.com"
        );
    }

    #[test]
    fn the_guides_names_example() {
        for (i, name) in ["infra0", "infra1", "infra2"].iter().enumerate() {
            let ap = format!("http://infra{i}.example.com:2380");
            let c = build(name, &ap, &plain_guide()).unwrap();
            assert_eq!(c.members.len(), 3);
            let me = c.members.iter().find(|m| m.name == *name).unwrap();
            assert_eq!(me.peer_urls, parse_urls(&ap).unwrap());
            // The others are named by index.
            let others: Vec<&str> = c
                .members
                .iter()
                .filter(|m| m.name != *name)
                .map(|m| m.name.as_str())
                .collect();
            assert_eq!(others, ["0", "1"]);
            assert_eq!(c.peer_server_name, None);
            assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        }
    }

    #[test]
    fn the_guides_ip_example_hashes_the_srv_names() {
        let c = build("infra1", "http://10.0.1.11:2380", &plain_guide()).unwrap();
        let me = c.members.iter().find(|m| m.name == "infra1").unwrap();
        assert_eq!(
            format_initial_cluster(std::slice::from_ref(me)),
            "infra1=http://infra1.example.com:2380"
        );
        // Every member derives the same IDs, whichever it is.
        let ids_of = |c: &SrvCluster| {
            let mut v: Vec<u64> = c
                .members
                .iter()
                .map(|m| ids::member_id(&m.peer_urls, "etcd-cluster-1", None))
                .collect();
            v.sort();
            v
        };
        let c0 = build("infra0", "http://10.0.1.10:2380", &plain_guide()).unwrap();
        let c2 = build("infra2", "http://infra2.example.com:2380", &plain_guide()).unwrap();
        assert_eq!(ids_of(&c), ids_of(&c0));
        assert_eq!(ids_of(&c), ids_of(&c2));
    }

    #[test]
    fn ssl_records_mean_https_and_the_domain_as_server_name() {
        let l = SrvLookups {
            ssl: Ok(guide_records(2380)),
            plain: Err("no such host".into()),
            hosts: guide_hosts(),
        };
        let c = build("infra0", "https://infra0.example.com:2380", &l).unwrap();
        assert!(c.pairs.iter().all(|p| p.contains("=https://")));
        assert_eq!(c.peer_server_name.as_deref(), Some("example.com"));
        // With a peer CA, each peer is checked against its own name.
        let c = cluster_from_srv(
            "example.com",
            "",
            "infra0",
            &parse_urls("https://infra0.example.com:2380").unwrap(),
            true,
            &l,
        )
        .unwrap();
        assert_eq!(c.peer_server_name, None);
    }

    #[test]
    fn both_services_are_combined() {
        let l = SrvLookups {
            ssl: Ok(vec![rec("infra0.example.com.", 2380)]),
            plain: Ok(vec![rec("infra1.example.com.", 2380)]),
            hosts: guide_hosts(),
        };
        let c = build("infra1", "http://10.0.1.11:2380", &l).unwrap();
        assert_eq!(
            c.pairs,
            [
                "0=https://infra0.example.com:2380",
                "infra1=http://infra1.example.com:2380"
            ]
        );
    }

    #[test]
    fn no_records_is_etcds_error() {
        let l = SrvLookups {
            ssl: Err("lookup _etcd-server-ssl._tcp.example.com: no such host".into()),
            plain: Err("lookup _etcd-server._tcp.example.com: no such host".into()),
            hosts: guide_hosts(),
        };
        let e = build("infra0", "http://10.0.1.10:2380", &l)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "error querying DNS SRV records for _etcd-server-ssl lookup _etcd-server-ssl._tcp.example.com: no such host; \
             error querying DNS SRV records for _etcd-server lookup _etcd-server._tcp.example.com: no such host"
        );
        // Records whose targets do not resolve count as none.
        let l = SrvLookups {
            ssl: Err("x".into()),
            plain: Ok(vec![rec("nowhere.example.com.", 2380)]),
            hosts: guide_hosts(),
        };
        let e = build("infra0", "http://10.0.1.10:2380", &l)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("error querying DNS SRV records for _etcd-server lookup nowhere.example.com: no such host"), "{e}");
    }

    #[test]
    fn a_member_not_in_the_records() {
        let e = build("infra3", "http://10.0.1.13:2380", &plain_guide()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot find local etcd member \"infra3\" in SRV records"
        );
        // Same host, other port.
        let e = build("infra0", "http://10.0.1.10:2381", &plain_guide()).unwrap_err();
        assert_eq!(e, SrvError::LocalNotFound("infra0".into()));
    }

    #[test]
    fn scheme_mismatch_names_both_urls() {
        let e = build("infra0", "https://10.0.1.10:2380", &plain_guide()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bootstrap at http://infra0.example.com:2380 from DNS for etcd-server has scheme mismatch with expected peer https://10.0.1.10:2380"
        );
    }

    #[test]
    fn srv_name_suffix_in_messages() {
        let l = SrvLookups {
            ssl: Err("no such host".into()),
            plain: Err("no such host".into()),
            hosts: HostAddrs::new(),
        };
        let e = cluster_from_srv(
            "example.com",
            "foo",
            "a",
            &parse_urls("http://10.0.1.10:2380").unwrap(),
            false,
            &l,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("_etcd-server-ssl-foo no such host"), "{e}");
        assert!(e.contains("_etcd-server-foo no such host"), "{e}");
    }

    #[test]
    fn advertised_name_that_does_not_resolve() {
        let e = build("infra0", "http://infra9.example.com:2380", &plain_guide()).unwrap_err();
        assert_eq!(e.to_string(), "lookup infra9.example.com: no such host");
    }

    #[test]
    fn hostile_targets_do_not_panic() {
        let mut hosts = guide_hosts();
        for t in ["a b", "[::1]", "x/y", "", ".", "é.example.com", "a:b"] {
            hosts.insert(t.to_string(), Ok(vec!["10.0.1.10".parse().unwrap()]));
        }
        let l = SrvLookups {
            ssl: Err("x".into()),
            plain: Ok(["a b", "[::1]", "x/y", "", ".", "é.example.com", "a:b"]
                .iter()
                .map(|t| rec(t, 2380))
                .collect()),
            hosts,
        };
        let _ = build("infra0", "http://10.0.1.10:2380", &l);
    }

    proptest::proptest! {
        /// SRV answers are network input: any targets, ports and resolutions give a cluster or
        /// an error, never a panic, and a cluster always lists the local member.
        #[test]
        fn any_answer_is_a_cluster_or_an_error(
            records in proptest::collection::vec((".{0,24}", proptest::prelude::any::<u16>(), 0u8..4), 0..6),
            local in 0usize..6,
        ) {
            let mut hosts = HostAddrs::new();
            let recs: Vec<SrvRecord> = records
                .iter()
                .map(|(t, port, ip)| {
                    hosts.insert(t.trim_end_matches('.').to_string(), Ok(vec![format!("10.0.1.1{ip}").parse().unwrap()]));
                    rec(t, *port)
                })
                .collect();
            let ap = match records.get(local) {
                Some((_, port, ip)) => format!("http://10.0.1.1{ip}:{port}"),
                None => "http://10.0.1.19:2380".to_string(),
            };
            let l = SrvLookups { ssl: Ok(recs.clone()), plain: Ok(recs), hosts };
            if let Ok(c) = build("me", &ap, &l) {
                proptest::prop_assert!(c.members.iter().any(|m| m.name == "me"));
            }
        }
    }

    #[test]
    fn record_order_does_not_change_the_cluster() {
        let mut l = plain_guide();
        let a = build("infra1", "http://10.0.1.11:2380", &l).unwrap();
        l.plain.as_mut().unwrap().reverse();
        let b = build("infra1", "http://10.0.1.11:2380", &l).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn hosts_to_resolve_skips_ips() {
        let l = plain_guide();
        let h = hosts_to_resolve(
            &l.ssl,
            &l.plain,
            &parse_urls("http://10.0.1.10:2380,http://me.example.com:1").unwrap(),
        );
        assert_eq!(
            h,
            [
                "me.example.com",
                "infra0.example.com",
                "infra1.example.com",
                "infra2.example.com"
            ]
        );
    }

    #[test]
    fn client_endpoints_are_etcds() {
        let e = client_endpoints(&Err("a".into()), &Err("b".into())).unwrap_err();
        assert_eq!(e, "dns lookup errors: a and b");
        let got = client_endpoints(&Err("a".into()), &Ok(guide_records(2379))).unwrap();
        assert_eq!(got[0].to_string(), "http://infra0.example.com:2379");
        let got = client_endpoints(
            &Ok(vec![rec("infra0.example.com.", 2379)]),
            &Ok(vec![rec("infra1.example.com", 2379)]),
        )
        .unwrap();
        assert_eq!(
            got.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
            [
                "https://infra0.example.com:2379",
                "http://infra1.example.com:2379"
            ]
        );
    }
}
