#![cfg(madsim)]
//! DNS SRV discovery under simulation (`sim/src/srv.rs`): the guide's SRV bootstrap (names and
//! IPs), missing and partial records, a member not in the records, slow and failing DNS, a DNS
//! server that never answers, and records that change between members' lookups. Each ends with
//! `[one cluster]`: one cluster whose IDs are etcd's for the SRV URLs, members outside it
//! stopped with a clear error; never two clusters.

use detcd_sim::srv::{
    check_one_cluster, checker_host, guide_member_id, outcomes, srv_config, start_srv_member,
    DnsBehaviour, SimDns, SimZone, SrvMember,
};
use std::time::Duration;

const GUIDE: [(&str, &str, &str); 3] = [
    ("infra0", "infra0.example.com", "10.0.1.10"),
    ("infra1", "infra1.example.com", "10.0.1.11"),
    ("infra2", "infra2.example.com", "10.0.1.12"),
];
const INFRA3: (&str, &str, &str) = ("infra3", "infra3.example.com", "10.0.1.13");

fn zone_of(members: &[(&str, &str, &str)]) -> SimZone {
    let hosts: Vec<(&str, &str)> = members.iter().map(|(_, h, ip)| (*h, *ip)).collect();
    SimZone::guide(&hosts, false)
}

/// A records for every host, SRV records only for `listed`.
fn zone_listing(listed: &[(&str, &str, &str)], all: &[(&str, &str, &str)]) -> SimZone {
    let mut z = zone_of(listed);
    for (_, h, ip) in all {
        z.a.insert(h.to_string(), vec![ip.parse().unwrap()]);
    }
    z
}

fn start(members: &[(&str, &str, &str)], dns: &SimDns, names: bool) -> Vec<SrvMember> {
    members
        .iter()
        .map(|(n, h, ip)| start_srv_member(srv_config(n, h, ip, names), ip, dns.clone()))
        .collect()
}

/// Polls until `[one cluster]` holds with every member either serving or stopped (or `bound`
/// passes: then the last violation is the failure).
async fn settle(
    checker: &madsim::runtime::NodeHandle,
    members: &[SrvMember],
    bound: Duration,
) -> Option<(u64, Vec<u64>)> {
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let deadline = madsim::time::Instant::now() + bound;
    loop {
        let got = outcomes(checker, members).await;
        let verdict = check_one_cluster(&names, &got);
        match verdict {
            Ok(c) => return c,
            Err(e) if madsim::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => madsim::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn ids(hosts: &[(&str, &str, &str)]) -> Vec<u64> {
    let mut v: Vec<u64> = hosts.iter().map(|(_, h, _)| guide_member_id(h)).collect();
    v.sort();
    v
}

fn stopped_with(members: &[SrvMember], name: &str) -> String {
    let m = members.iter().find(|m| m.name == name).unwrap();
    m.exit
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| panic!("{name} is still running"))
}

async fn guide_bootstrap(names: bool) {
    let dns = SimDns::new(zone_of(&GUIDE));
    dns.behaviour.lock().unwrap().delay_ms = (5, 300);
    let members = start(&GUIDE, &dns, names);
    let (cluster, member_ids) = settle(&checker_host(), &members, Duration::from_secs(30))
        .await
        .expect("[one cluster] no cluster formed");
    assert_eq!(
        member_ids,
        ids(&GUIDE),
        "[one cluster] IDs differ from etcd's for the SRV URLs"
    );
    assert_eq!(cluster, detcd_core::ids::cluster_id(&ids(&GUIDE)));
    assert!(
        dns.srv_asked.lock().unwrap().len() >= 6,
        "every member asked both services"
    );
}

#[madsim::test]
async fn guide_srv_bootstrap_with_names() {
    guide_bootstrap(true).await;
}

#[madsim::test]
async fn guide_srv_bootstrap_with_ips() {
    guide_bootstrap(false).await;
}

#[madsim::test]
async fn missing_records() {
    let dns = SimDns::new(zone_listing(&[], &GUIDE));
    let members = start(&GUIDE, &dns, true);
    assert_eq!(
        settle(&checker_host(), &members, Duration::from_secs(20)).await,
        None
    );
    for (n, _, _) in GUIDE {
        let e = stopped_with(&members, n);
        assert!(
            e.contains("error querying DNS SRV records for _etcd-server-ssl"),
            "{e}"
        );
        assert!(
            e.contains("error querying DNS SRV records for _etcd-server "),
            "{e}"
        );
    }
}

#[madsim::test]
async fn partial_records() {
    // The record of infra2 is missing: it cannot find itself; infra0 and infra1 form a
    // two-member cluster.
    let dns = SimDns::new(zone_listing(&GUIDE[..2], &GUIDE));
    dns.behaviour.lock().unwrap().delay_ms = (5, 300);
    let members = start(&GUIDE, &dns, true);
    let (_, member_ids) = settle(&checker_host(), &members, Duration::from_secs(30))
        .await
        .expect("[one cluster] no cluster");
    assert_eq!(member_ids, ids(&GUIDE[..2]));
    let e = stopped_with(&members, "infra2");
    assert!(
        e.contains("cannot find local etcd member \"infra2\" in SRV records"),
        "{e}"
    );
}

#[madsim::test]
async fn member_not_in_the_records() {
    let dns = SimDns::new(zone_listing(
        &GUIDE,
        &[GUIDE[0], GUIDE[1], GUIDE[2], INFRA3],
    ));
    let all = [GUIDE[0], GUIDE[1], GUIDE[2], INFRA3];
    let members = start(&all, &dns, false);
    let (_, member_ids) = settle(&checker_host(), &members, Duration::from_secs(30))
        .await
        .expect("[one cluster] no cluster");
    assert_eq!(member_ids, ids(&GUIDE));
    let e = stopped_with(&members, "infra3");
    assert!(
        e.contains("cannot find local etcd member \"infra3\" in SRV records"),
        "{e}"
    );
}

#[madsim::test]
async fn slow_and_failing_dns() {
    let dns = SimDns::new(zone_of(&GUIDE));
    *dns.behaviour.lock().unwrap() = DnsBehaviour {
        delay_ms: (200, 1500),
        timeout_percent: 30,
        silent: false,
    };
    let members = start(&GUIDE, &dns, true);
    // One cluster, or a member that gave up on DNS with a clear error: never two clusters.
    let found = settle(&checker_host(), &members, Duration::from_secs(60)).await;
    assert!(
        *dns.timeouts.lock().unwrap() > 0,
        "[faults] no DNS lookup timed out"
    );
    if let Some((_, member_ids)) = found {
        assert!(
            member_ids.iter().all(|id| ids(&GUIDE).contains(id)),
            "{member_ids:x?}"
        );
    }
}

#[madsim::test]
async fn dns_that_never_answers() {
    let dns = SimDns::new(zone_of(&GUIDE));
    dns.behaviour.lock().unwrap().silent = true;
    let members = start(&GUIDE, &dns, true);
    assert_eq!(
        settle(&checker_host(), &members, Duration::from_secs(40)).await,
        None
    );
    let e = stopped_with(&members, "infra1");
    assert!(
        e.contains("DNS SRV discovery failed: _etcd-server-ssl._tcp.example.com did not answer after 4 attempts"),
        "{e}"
    );
}

#[madsim::test]
async fn records_change_between_members_lookups() {
    // infra0 reads {infra0, infra1, infra2}; then infra0 is replaced by infra3 in the records
    // before the others look: they form {infra1, infra2, infra3}, a cluster of another ID.
    // infra0 must learn it on the peer handshake and stop ("conflicting cluster ID").
    let all = [GUIDE[0], GUIDE[1], GUIDE[2], INFRA3];
    let dns = SimDns::new(zone_listing(&GUIDE, &all));
    let mut members = start(&GUIDE[..1], &dns, true);
    while dns.srv_asked.lock().unwrap().len() < 2 {
        madsim::time::sleep(Duration::from_millis(10)).await;
    }
    *dns.zone.lock().unwrap() = zone_listing(&[GUIDE[1], GUIDE[2], INFRA3], &all);
    members.extend(start(&[GUIDE[1], GUIDE[2], INFRA3], &dns, true));
    let (_, member_ids) = settle(&checker_host(), &members, Duration::from_secs(40))
        .await
        .expect("[one cluster] no cluster");
    assert_eq!(member_ids, ids(&[GUIDE[1], GUIDE[2], INFRA3]));
    let e = stopped_with(&members, "infra0");
    assert!(
        e.contains("conflicting cluster ID to the target cluster"),
        "{e}"
    );
}
