//! The clustering guide's etcd discovery, both sides, with real processes on loopback: detcd
//! hosting the discovery service (the v2 keys API behind `--enable-v2`, and `/new?size=N`),
//! detcd members bootstrapping through a detcd or a real etcd 3.4 host, real etcd 3.4
//! members bootstrapping through a detcd host, and the error and warning cases.

use detcd_tests::{
    etcd_server_path, etcdctl_ok, have_etcd_server, have_etcdctl, http_get, http_request, ip,
    subnet, Cluster, Deadline, CLIENT_PORT, HEALTHY_TIMEOUT, PEER_PORT,
};
use std::time::Duration;

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags of a member that bootstraps through `discovery_url` (the guide's discovery
/// example: no --initial-cluster).
fn discovery_args(c: &Cluster, name: &str, me: &str, discovery_url: &str) -> Vec<String> {
    [
        "--name",
        name,
        "--initial-advertise-peer-urls",
        &format!("http://{me}:{PEER_PORT}"),
        "--listen-peer-urls",
        &format!("http://{me}:{PEER_PORT}"),
        "--listen-client-urls",
        &format!("http://{me}:{CLIENT_PORT}"),
        "--advertise-client-urls",
        &format!("http://{me}:{CLIENT_PORT}"),
        "--discovery",
        discovery_url,
        "--data-dir",
        &c.dir().join(format!("{name}.etcd")).to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A one-member discovery host (detcd, or real etcd with `etcd`) at `me`, with v2 enabled;
/// returns its member index.
fn add_host(c: &mut Cluster, me: &str, etcd: bool) -> usize {
    let mut args = detcd_tests::guide_args(c.dir(), 0, 0, 1, "discovery-host");
    let peer = format!("http://{me}:{PEER_PORT}");
    let client = format!("http://{me}:{CLIENT_PORT}");
    detcd_tests::set_flag(&mut args, "--name", "host");
    detcd_tests::set_flag(&mut args, "--initial-advertise-peer-urls", &peer);
    detcd_tests::set_flag(&mut args, "--listen-peer-urls", &peer);
    detcd_tests::set_flag(&mut args, "--listen-client-urls", &client);
    detcd_tests::set_flag(&mut args, "--advertise-client-urls", &client);
    detcd_tests::set_flag(&mut args, "--initial-cluster", &format!("host={peer}"));
    detcd_tests::set_flag(
        &mut args,
        "--data-dir",
        &c.dir().join("host.etcd").to_string_lossy(),
    );
    args.push("--enable-v2".into());
    let i = c.add("host", me.to_string(), args, vec![]);
    if etcd {
        c.members[i].bin = etcd_server_path();
    }
    i
}

/// `curl -X PUT <url>/_config/size -d value=<size>` against a host at `addr`.
fn put_size(addr: &str, token_path: &str, size: usize) {
    let (code, body) = http_request(
        addr,
        "PUT",
        &format!("{token_path}/_config/size"),
        Some(&format!("value={size}")),
        HTTP_TIMEOUT,
    )
    .unwrap();
    assert!(code == 200 || code == 201, "{code} {body}");
}

/// `etcdctl member list` as (id, name) pairs.
fn member_list(endpoint: &str) -> Vec<(String, String)> {
    let out = etcdctl_ok(&[endpoint.to_string()], &["member", "list"]);
    let mut list: Vec<(String, String)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            (f.len() >= 3).then(|| (f[0].to_string(), f[2].to_string()))
        })
        .collect();
    list.sort_by(|a, b| a.1.cmp(&b.1));
    list
}

/// The member ID etcd gives a member bootstrapped through `durl` (its peer URL hashed with
/// the whole discovery URL), computed with detcd's code.
fn expected_id(peer_url: &str, durl: &str) -> String {
    let url = detcd_core::config::Url::parse(peer_url).unwrap();
    detcd_core::ids::format_id(detcd_core::discovery::member_id_v2(&[url], durl))
}

/// Three members infra0..2 at `ip(subnet, 0..3)` (real etcd ones with `etcd`) bootstrap
/// through `durl`; checks the member list and that each ID is etcd's for its peer URL and
/// `durl`. Returns the member list, as (id, name).
fn bootstrap_three_v2(c: &mut Cluster, durl: &str, etcd: bool) -> Vec<(String, String)> {
    let s = c.subnet;
    let mut ms = Vec::new();
    for i in 0..3 {
        let me = ip(s, i);
        let args = discovery_args(c, &format!("infra{i}"), &me, durl);
        let m = c.add(&format!("infra{i}"), me, args, vec![]);
        if etcd {
            c.members[m].bin = etcd_server_path();
        }
        c.members[m].start();
        ms.push(m);
    }
    for &m in &ms {
        c.members[m].wait_healthy(HEALTHY_TIMEOUT);
    }
    let list = member_list(&c.members[ms[0]].client_url());
    let names: Vec<&str> = list.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["infra0", "infra1", "infra2"], "{list:?}");
    for (id, name) in &list {
        let i: usize = name[5..].parse().unwrap();
        let peer = format!("http://{}:{PEER_PORT}", ip(s, i));
        assert_eq!(id, &expected_id(&peer, durl), "{name}");
    }
    list
}

/// Waits until `path` on `addr` answers 200 and `check` accepts the body.
fn wait_body(addr: &str, path: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Deadline::new(HEALTHY_TIMEOUT, what);
    loop {
        let last = match http_get(addr, path, HTTP_TIMEOUT) {
            Ok((200, body)) if check(&body) => return body,
            other => format!("{other:?}"),
        };
        deadline.check(&last);
        deadline.pause();
    }
}

/// The guide's flow against `/new`: a detcd host hands out a token, three detcd members
/// bootstrap through it with etcd's member IDs, a fourth finds the cluster full (exit 1 with
/// `--discovery-fallback exit`; with the default `proxy`, it serves the cluster's client
/// traffic), and a restarted member ignores the token with etcd's warning.
#[test]
fn detcd_members_bootstrap_through_new_on_a_detcd_host() {
    if !have_etcdctl() {
        return;
    }
    let s = subnet::DISCOVERY_NEW;
    let mut c = Cluster::empty("discovery-new", s);
    let host_ip = ip(s, 9);
    let host = add_host(&mut c, &host_ip, false);
    c.members[host].start();
    c.members[host].wait_healthy(HEALTHY_TIMEOUT);
    let host_addr = format!("{host_ip}:{CLIENT_PORT}");
    // A bad size is refused; the default is 3.
    let (code, body) = http_get(&host_addr, "/new?size=abc", HTTP_TIMEOUT).unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, durl) = http_get(&host_addr, "/new", HTTP_TIMEOUT).unwrap();
    assert_eq!(code, 200, "{durl}");
    let token = durl.rsplit('/').next().unwrap().to_string();
    assert_eq!(token.len(), 32, "{durl}");
    assert!(token.chars().all(|ch| ch.is_ascii_hexdigit()), "{durl}");
    let token_path = durl.trim_start_matches(&format!("http://{host_addr}"));
    let size = wait_body(
        &host_addr,
        &format!("{token_path}/_config/size"),
        "size",
        |_| true,
    );
    assert!(size.contains(r#""value":"3""#), "{size}");

    let list = bootstrap_three_v2(&mut c, &durl, false);
    // The registrations are in the token's directory, under those IDs.
    let dir = wait_body(&host_addr, token_path, "token dir", |_| true);
    for (id, name) in &list {
        assert!(dir.contains(&format!("/{id}\"")), "{dir}");
        assert!(dir.contains(&format!("{name}=http://")), "{dir}");
    }

    // A fourth member: the cluster is full.
    let me = ip(s, 3);
    let mut args = discovery_args(&c, "infra3", &me, &durl);
    args.extend(["--discovery-fallback".to_string(), "exit".to_string()]);
    let extra = c.add("infra3", me.clone(), args, vec![]);
    c.members[extra].start();
    let status = c.members[extra].wait_exit(HEALTHY_TIMEOUT);
    assert_eq!(status.code(), Some(1));
    assert!(
        c.members[extra]
            .stderr()
            .contains("failed to join discovery cluster (discovery: cluster is full)"),
        "{}",
        c.members[extra].log_tail(10)
    );
    // With etcd 3.4's default fallback it proxies to the cluster instead.
    c.members[extra].args = discovery_args(&c, "infra3", &me, &durl);
    c.members[extra].start();
    let proxied = vec![c.members[extra].client_url()];
    let deadline = Deadline::new(HEALTHY_TIMEOUT, "a put through the proxy");
    loop {
        let out = detcd_tests::etcdctl(&proxied, &["put", "through-proxy", "yes"]);
        if out.success() {
            break;
        }
        deadline.check(&out.stderr);
        deadline.pause();
    }
    let got = etcdctl_ok(&[c.members[1].client_url()], &["get", "through-proxy"]);
    assert!(got.stdout.contains("yes"), "{}", got.stdout);
    assert!(c.members[extra]
        .stderr()
        .contains("discovery cluster full, falling back to proxy"));

    // A restart with --discovery and a data dir: the token is ignored, with etcd's warning.
    c.members[1].kill();
    c.members[1].start();
    c.members[1].wait_healthy(HEALTHY_TIMEOUT);
    let log = c.members[1].stderr();
    assert!(
        log.contains("discovery token ignored since a cluster has already been initialized. Valid log found at"),
        "{}",
        c.members[1].log_tail(20)
    );
}

/// Proof that detcd's v2 keys API satisfies etcd's own discovery client: three real etcd
/// 3.4 members bootstrap through a detcd host, and their member IDs are the ones detcd's
/// formula gives.
#[test]
fn real_etcd_members_bootstrap_through_a_detcd_host() {
    if !have_etcdctl() || !have_etcd_server() {
        return;
    }
    let s = subnet::DISCOVERY_ETCD_MEMBERS;
    let mut c = Cluster::empty("discovery-etcd-members", s);
    let host_ip = ip(s, 9);
    let host = add_host(&mut c, &host_ip, false);
    c.members[host].start();
    c.members[host].wait_healthy(HEALTHY_TIMEOUT);
    let host_addr = format!("{host_ip}:{CLIENT_PORT}");
    // The guide's custom discovery service: a token directory made by hand.
    let token_path = "/v2/keys/discovery/6c007a14875d53d9bf0ef5a6fc0257c817f0fb83";
    put_size(&host_addr, token_path, 3);
    let durl = format!("http://{host_addr}{token_path}");
    bootstrap_three_v2(&mut c, &durl, true);
}

/// detcd members bootstrap through a real etcd 3.4 host (`--enable-v2`).
#[test]
fn detcd_members_bootstrap_through_a_real_etcd_host() {
    if !have_etcdctl() || !have_etcd_server() {
        return;
    }
    let s = subnet::DISCOVERY_ETCD_HOST;
    let mut c = Cluster::empty("discovery-etcd-host", s);
    let host_ip = ip(s, 9);
    let host = add_host(&mut c, &host_ip, true);
    c.members[host].start();
    c.members[host].wait_healthy(HEALTHY_TIMEOUT);
    let host_addr = format!("{host_ip}:{CLIENT_PORT}");
    let token_path = "/v2/keys/discovery/detcd-through-etcd";
    put_size(&host_addr, token_path, 3);
    let durl = format!("http://{host_addr}{token_path}");
    bootstrap_three_v2(&mut c, &durl, false);
}

/// The host is itself a three-member detcd cluster: a token made on one member is served by
/// the others (the v2 store is replicated), and members bootstrap through a member that is
/// not the one the token was made on while another host member is down.
#[test]
fn a_three_member_detcd_host_serves_discovery_with_a_member_down() {
    if !have_etcdctl() {
        return;
    }
    let s = subnet::DISCOVERY_HOST_CLUSTER;
    let mut c = Cluster::guide("discovery-host-cluster", s, 3, "host-cluster");
    for m in &mut c.members {
        m.args.push("--enable-v2".into());
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);
    let addr = |i: usize| format!("{}:{CLIENT_PORT}", ip(s, i));
    let (code, durl) = http_get(&addr(0), "/new?size=2", HTTP_TIMEOUT).unwrap();
    assert_eq!(code, 200, "{durl}");
    let token_path = durl
        .trim_start_matches(&format!("http://{}", addr(0)))
        .to_string();
    c.members[0].kill();
    // A write through member 1 succeeds once the two left have a leader (a proposal made
    // while the old leader is gone times out, as etcd's does, and discovery's registration
    // is not retried: etcd's v2discovery gives up on it).
    let deadline = Deadline::new(
        HEALTHY_TIMEOUT,
        "a v2 write on the host after a member went down",
    );
    loop {
        match http_request(
            &addr(1),
            "PUT",
            "/v2/keys/probe",
            Some("value=1"),
            HTTP_TIMEOUT,
        ) {
            Ok((200 | 201, _)) => break,
            other => deadline.check(&format!("{other:?}")),
        }
        deadline.pause();
    }
    let durl = format!("http://{}{token_path}", addr(1));
    for i in 0..2 {
        let me = ip(s, 10 + i);
        let name = format!("node{i}");
        let args = discovery_args(&c, &name, &me, &durl);
        let m = c.add(&name, me, args, vec![]);
        c.members[m].start();
    }
    c.members[3].wait_healthy(HEALTHY_TIMEOUT);
    c.members[4].wait_healthy(HEALTHY_TIMEOUT);
    let list = member_list(&c.members[3].client_url());
    let names: Vec<&str> = list.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["node0", "node1"]);
    // The other live host member sees the registrations too.
    let dir = wait_body(&addr(2), &token_path, "token dir on member 2", |b| {
        b.matches("=http://").count() == 2
    });
    assert!(dir.contains("node0=http://"), "{dir}");
}

/// The guide's and etcd's messages: no size, duplicate names, conflicting flags, and a
/// discovery host that does not answer (retried with etcd's backoff, visibly).
#[test]
fn discovery_errors_name_the_problem() {
    let s = subnet::DISCOVERY_ERRORS;
    let mut c = Cluster::empty("discovery-errors", s);
    let host_ip = ip(s, 9);
    let host = add_host(&mut c, &host_ip, false);
    c.members[host].start();
    c.members[host].wait_healthy(HEALTHY_TIMEOUT);
    let host_addr = format!("{host_ip}:{CLIENT_PORT}");

    // No size under the token: the guide's sentence, exit 1, nothing left behind.
    let durl = format!("http://{host_addr}/v2/keys/discovery/nosize");
    let args = discovery_args(&c, "infra0", &ip(s, 0), &durl);
    let m = c.add("infra0", ip(s, 0), args, vec![]);
    c.members[m].start();
    assert_eq!(c.members[m].wait_exit(HEALTHY_TIMEOUT).code(), Some(1));
    assert!(
        c.members[m].stderr().contains(&format!(
            "error: the cluster doesn't have a size configuration value in {durl}/_config"
        )),
        "{}",
        c.members[m].log_tail(5)
    );
    assert!(
        !c.members[m].data_dir.exists(),
        "a refused start leaves no data dir"
    );

    // Two members both named "default": each is told names must be unique.
    let token_path = "/v2/keys/discovery/dupnames";
    put_size(&host_addr, token_path, 2);
    let durl = format!("http://{host_addr}{token_path}");
    let mut dups = Vec::new();
    for i in 1..3 {
        let me = ip(s, i);
        let mut args = discovery_args(&c, "default", &me, &durl);
        detcd_tests::set_flag(
            &mut args,
            "--data-dir",
            &c.dir().join(format!("default{i}.etcd")).to_string_lossy(),
        );
        dups.push(c.add(&format!("default{i}"), me, args, vec![]));
    }
    for &d in &dups {
        c.members[d].start();
    }
    for &d in &dups {
        assert_eq!(c.members[d].wait_exit(HEALTHY_TIMEOUT).code(), Some(1));
        let err = c.members[d].stderr();
        assert!(
            err.contains("discovery: found duplicate name") && err.contains("unique --name"),
            "{}",
            c.members[d].log_tail(8)
        );
    }

    // --discovery with --initial-cluster: etcd's message.
    let mut args = discovery_args(&c, "infra3", &ip(s, 3), &durl);
    args.extend([
        "--initial-cluster".to_string(),
        format!("infra3=http://{}:{PEER_PORT}", ip(s, 3)),
    ]);
    let m = c.add("infra3", ip(s, 3), args, vec![]);
    c.members[m].start();
    assert_eq!(c.members[m].wait_exit(HEALTHY_TIMEOUT).code(), Some(1));
    assert!(c.members[m]
        .stderr()
        .contains("multiple discovery or bootstrap flags are set"));

    // Nothing listens at the discovery URL: retries with etcd's backoff, logged, no exit.
    let durl = format!("http://{}:{CLIENT_PORT}/v2/keys/discovery/nobody", ip(s, 8));
    let args = discovery_args(&c, "infra4", &ip(s, 4), &durl);
    let m = c.add("infra4", ip(s, 4), args, vec![]);
    c.members[m].start();
    let deadline = Deadline::new(HEALTHY_TIMEOUT, "a logged discovery retry");
    loop {
        let log = c.members[m].stderr();
        if log.contains("retrying in 2s") {
            break;
        }
        deadline.check(&c.members[m].log_tail(5));
        deadline.pause();
    }
    assert!(
        c.members[m].is_running(),
        "a member waiting for discovery keeps waiting"
    );
}

/// The flags of a member that bootstraps through etcd 3.6's v3 discovery: `token` in the
/// discovery cluster at `endpoints` (no --initial-cluster).
fn discovery_v3_args(
    c: &Cluster,
    name: &str,
    me: &str,
    token: &str,
    endpoints: &str,
) -> Vec<String> {
    let mut args = discovery_args(c, name, me, "unused");
    let i = args.iter().position(|a| a == "--discovery").unwrap();
    args.drain(i..i + 2);
    args.extend(
        [
            "--discovery-token",
            token,
            "--discovery-endpoints",
            endpoints,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args
}

/// The member ID etcd 3.6 gives a member bootstrapped through v3 discovery with `token` (its
/// peer URL hashed with the token), computed with detcd's code.
fn expected_id_v3(peer_url: &str, token: &str) -> String {
    let url = detcd_core::config::Url::parse(peer_url).unwrap();
    detcd_core::ids::format_id(detcd_core::discovery::member_id_v3(&[url], token))
}

/// Three members named infra<first>..infra<first+2> at `ip(s, first..)` bootstrap through v3
/// discovery with `token` at `endpoints`; checks the member list and IDs, and returns the
/// members' indices.
fn bootstrap_three_v3(c: &mut Cluster, first: usize, token: &str, endpoints: &str) -> Vec<usize> {
    let s = subnet::DISCOVERY_V3;
    let mut ms = Vec::new();
    for i in first..first + 3 {
        let me = ip(s, i);
        let args = discovery_v3_args(c, &format!("infra{i}"), &me, token, endpoints);
        let m = c.add(&format!("infra{i}"), me, args, vec![]);
        c.members[m].start();
        ms.push(m);
    }
    for &m in &ms {
        c.members[m].wait_healthy(HEALTHY_TIMEOUT);
    }
    let list = member_list(&c.members[ms[0]].client_url());
    let names: Vec<String> = list.iter().map(|(_, n)| n.clone()).collect();
    let want: Vec<String> = (first..first + 3).map(|i| format!("infra{i}")).collect();
    assert_eq!(names, want, "{list:?}");
    for (id, name) in &list {
        let i: usize = name[5..].parse().unwrap();
        let peer = format!("http://{}:{PEER_PORT}", ip(s, i));
        assert_eq!(id, &expected_id_v3(&peer, token), "{name}");
    }
    ms
}

/// etcd 3.6's v3 discovery end to end, with a one-member detcd cluster as the discovery
/// service: the size put with etcdctl, three detcd members bootstrap through it with etcd
/// 3.6's member IDs (the first endpoint, in etcd's sorted order, has nothing listening: the
/// client fails over), a fourth finds the cluster full and exits 1 (etcd 3.6 has no proxy
/// fallback), a token without a size is refused, and a restarted member ignores the token
/// with etcd 3.6's warning.
///
/// No real etcd 3.6 runs here: this machine has Debian's etcd 3.4, which has no v3 discovery
/// (see the next test for a real etcd 3.4 *serving* the v3 API to detcd's discovery client).
#[test]
fn detcd_members_bootstrap_through_v3_discovery_on_a_detcd_host() {
    if !have_etcdctl() {
        return;
    }
    let s = subnet::DISCOVERY_V3;
    let mut c = Cluster::empty("discovery-v3", s);
    let host_ip = ip(s, 9);
    let host = add_host(&mut c, &host_ip, false);
    c.members[host].start();
    c.members[host].wait_healthy(HEALTHY_TIMEOUT);
    let host_url = c.members[host].client_url();
    let token = "detcd-v3-token";
    etcdctl_ok(
        std::slice::from_ref(&host_url),
        &["put", &format!("/_etcd/registry/{token}/_config/size"), "3"],
    );
    // Sorted, the bare dead endpoint comes first.
    let endpoints = format!("{}:{CLIENT_PORT},{host_url}", ip(s, 8));
    let ms = bootstrap_three_v3(&mut c, 0, token, &endpoints);
    // The registrations: one key per member ID, valued name=peerURL.
    let got = etcdctl_ok(
        std::slice::from_ref(&host_url),
        &[
            "get",
            "--prefix",
            &format!("/_etcd/registry/{token}/members/"),
        ],
    );
    for i in 0..3 {
        let peer = format!("http://{}:{PEER_PORT}", ip(s, i));
        let key = format!(
            "/_etcd/registry/{token}/members/{}",
            expected_id_v3(&peer, token)
        );
        assert!(got.stdout.contains(&key), "{}", got.stdout);
        assert!(
            got.stdout.contains(&format!("infra{i}={peer}")),
            "{}",
            got.stdout
        );
    }
    let log = c.members[ms[0]].stderr();
    assert!(
        log.contains("Bootstrapping cluster using v3 discovery.")
            && log.contains("discovery joined cluster successfully"),
        "{}",
        c.members[ms[0]].log_tail(20)
    );

    // A fourth member: the cluster is full, exit 1, nothing left behind.
    let me = ip(s, 3);
    let args = discovery_v3_args(&c, "infra3", &me, token, &host_url);
    let extra = c.add("infra3", me, args, vec![]);
    c.members[extra].start();
    assert_eq!(c.members[extra].wait_exit(HEALTHY_TIMEOUT).code(), Some(1));
    let err = c.members[extra].stderr();
    assert!(
        err.contains("failed to join discovery cluster (discovery: cluster is full)")
            && err.contains(
                "do not reuse discovery token; generate a new one to bootstrap a cluster"
            ),
        "{}",
        c.members[extra].log_tail(10)
    );
    assert!(
        !c.members[extra].data_dir.exists(),
        "a refused start leaves no data dir"
    );

    // A token without a size.
    let me = ip(s, 4);
    let args = discovery_v3_args(&c, "infra4", &me, "nosize", &host_url);
    let m = c.add("infra4", me, args, vec![]);
    c.members[m].start();
    assert_eq!(c.members[m].wait_exit(HEALTHY_TIMEOUT).code(), Some(1));
    assert!(
        c.members[m]
            .stderr()
            .contains("failed to join discovery cluster (discovery: size key not found)"),
        "{}",
        c.members[m].log_tail(10)
    );

    // A restart with a data dir: the token is ignored, with etcd 3.6's warning.
    c.members[ms[1]].kill();
    c.members[ms[1]].start();
    c.members[ms[1]].wait_healthy(HEALTHY_TIMEOUT);
    assert!(
        c.members[ms[1]].stderr().contains(
            "discovery token is ignored since cluster already initialized; valid logs are found"
        ),
        "{}",
        c.members[ms[1]].log_tail(20)
    );
}

/// detcd's v3 discovery client against a real etcd server: Debian's etcd 3.4 serves the v3
/// KV and Watch API that etcd 3.6's discovery uses (it has no v3 discovery of its own), and
/// three detcd members bootstrap through it.
#[test]
fn detcd_members_bootstrap_through_v3_discovery_on_a_real_etcd_host() {
    if !have_etcdctl() || !have_etcd_server() {
        return;
    }
    let s = subnet::DISCOVERY_V3;
    let mut c = Cluster::empty("discovery-v3-etcd", s);
    let host_ip = ip(s, 29);
    let host = add_host(&mut c, &host_ip, true);
    c.members[host].start();
    c.members[host].wait_healthy(HEALTHY_TIMEOUT);
    let host_url = c.members[host].client_url();
    let token = "through-etcd";
    etcdctl_ok(
        std::slice::from_ref(&host_url),
        &["put", &format!("/_etcd/registry/{token}/_config/size"), "3"],
    );
    bootstrap_three_v3(&mut c, 20, token, &host_url);
}
