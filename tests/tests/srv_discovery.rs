//! The guide's "DNS discovery" section and its "Gateway" paragraph, end to end: a real DNS
//! server (tests/src/dns.rs) on a free loopback port serves the guide's records with
//! 10.0.1.10-12 mapped to 127.0.5x.10-12; detcd members reach it through
//! `--discovery-srv-resolver`. Both guide examples (advertised names, advertised IPs),
//! `--discovery-srv-name`, the ssl variant (certificates with and without the domain in their
//! SAN), the error cases, and `detcd gateway start` from SRV records with a member killed.

use detcd_tests::dns::{DnsServer, Zone};
use detcd_tests::tls::Ca;
use detcd_tests::{
    etcdctl, etcdctl_ok, have_etcdctl, ip, subnet, Cluster, Deadline, CLIENT_PORT, GUIDE_TOKEN,
    HEALTHY_TIMEOUT, PEER_PORT,
};
use std::time::Duration;

/// etcd's member IDs for `http://infraN.example.com:2380` with token `etcd-cluster-1` (SRV
/// bootstrap hashes the SRV targets' URLs, whatever the member advertises; etcd-facts §1 and §7).
const HTTP_IDS: [&str; 3] = ["a434bc977dbbaf3e", "89315860d4cce8f0", "518d77c6d7c5a9c1"];
/// The same for `https://infraN.example.com:2380`: what etcd 3.4.23 itself reports for the
/// guide's example over `_etcd-server-ssl` records (run here on 2026-11-30 in a network
/// namespace whose resolv.conf named a test DNS server; etcd 3.4 cannot bootstrap from plain
/// `_etcd-server` records, issue 11321), cluster ID 3de0396875843349.
const HTTPS_IDS: [&str; 3] = ["b94512c14e70514a", "add351150c895e38", "895c3ef00331fbe2"];
const HTTPS_CLUSTER_ID: u64 = 0x3de0396875843349;

/// The guide's records for `domain`, services with `suffix` (`-foo` or ""), `ssl` for
/// `_etcd-server-ssl`/`_etcd-client-ssl`.
fn guide_zone(sub: u8, suffix: &str, ssl: bool) -> Zone {
    let s = if ssl { "-ssl" } else { "" };
    let mut z = Zone::default();
    for i in 0..3 {
        let host = format!("infra{i}.example.com");
        z.srv(
            &format!("_etcd-server{s}{suffix}._tcp.example.com"),
            &format!("{host}."),
            PEER_PORT,
        )
        .srv(
            &format!("_etcd-client{s}{suffix}._tcp.example.com"),
            &format!("{host}."),
            CLIENT_PORT,
        )
        .a(&host, &ip(sub, i));
    }
    z
}

/// The guide's SRV command for member `i`: advertised `names` (infraN.example.com) or IPs.
fn srv_args(c: &Cluster, dns: &DnsServer, i: usize, names: bool, scheme: &str) -> Vec<String> {
    let me = ip(c.subnet, i);
    let host = if names {
        format!("infra{i}.example.com")
    } else {
        me.clone()
    };
    [
        "--name".to_string(),
        format!("infra{i}"),
        "--discovery-srv".into(),
        "example.com".into(),
        "--discovery-srv-resolver".into(),
        dns.resolver_arg(),
        "--initial-advertise-peer-urls".into(),
        format!("{scheme}://{host}:{PEER_PORT}"),
        "--initial-cluster-token".into(),
        GUIDE_TOKEN.into(),
        "--initial-cluster-state".into(),
        "new".into(),
        "--advertise-client-urls".into(),
        format!("http://{host}:{CLIENT_PORT}"),
        "--listen-client-urls".into(),
        format!("http://{me}:{CLIENT_PORT}"),
        "--listen-peer-urls".into(),
        format!("{scheme}://{me}:{PEER_PORT}"),
        "--data-dir".into(),
        c.dir().join(format!("infra{i}.etcd")).display().to_string(),
    ]
    .to_vec()
}

fn dns_ip(sub: u8) -> String {
    format!("127.0.{sub}.1")
}

/// Waits until `member list` through member 0 shows the three IDs, named, and returns its lines.
fn wait_member_list(c: &Cluster, ids: &[&str; 3]) -> Vec<String> {
    let ep = vec![c.members[0].client_url()];
    let deadline = Deadline::new(
        Duration::from_secs(30),
        "member list with the SRV members' IDs and names",
    );
    loop {
        let out = etcdctl(&ep, &["member", "list"]);
        let lines: Vec<String> = out.stdout.lines().map(|l| l.trim().to_string()).collect();
        let ok = out.success()
            && lines.len() == 3
            && (0..3).all(|i| {
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("{}, started, infra{i}, ", ids[i])))
            });
        if ok {
            return lines;
        }
        deadline.check(&format!("{out}\n{}", c.logs(20)));
        deadline.pause();
    }
}

fn put_get(endpoints: &[String], key: &str) {
    etcdctl_ok(endpoints, &["put", key, "bar"]);
    let got = etcdctl_ok(endpoints, &["get", key, "--print-value-only"]);
    assert_eq!(got.stdout.trim(), "bar", "{got}");
}

#[test]
fn guide_dns_example_with_names() {
    if !have_etcdctl() {
        return;
    }
    let sub = subnet::SRV_GUIDE_NAMES;
    let dns = DnsServer::start(&dns_ip(sub), guide_zone(sub, "", false));
    let mut c = Cluster::empty("srv_names", sub);
    for i in 0..3 {
        let args = srv_args(&c, &dns, i, true, "http");
        c.add(&format!("infra{i}"), ip(sub, i), args, vec![]);
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);
    let lines = wait_member_list(&c, &HTTP_IDS);
    // Peer and client URLs are the names (the SRV targets and the advertised client URLs).
    assert!(
        lines.iter().any(|l| l
            == &format!("{}, started, infra0, http://infra0.example.com:2380, http://infra0.example.com:2379, false", HTTP_IDS[0])),
        "{lines:?}"
    );
    put_get(&c.client_urls(), "foo");
    let log = c.members[1].stderr();
    assert!(
        log.contains("got bootstrap from DNS for etcd-server"),
        "{log}"
    );
}

#[test]
fn guide_dns_example_with_ips() {
    if !have_etcdctl() {
        return;
    }
    let sub = subnet::SRV_GUIDE_IPS;
    let dns = DnsServer::start(&dns_ip(sub), guide_zone(sub, "", false));
    let mut c = Cluster::empty("srv_ips", sub);
    for i in 0..3 {
        let args = srv_args(&c, &dns, i, false, "http");
        c.add(&format!("infra{i}"), ip(sub, i), args, vec![]);
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);
    // The IDs hash the SRV targets' URLs, so they equal the names example's.
    wait_member_list(&c, &HTTP_IDS);
    put_get(&c.client_urls(), "foo");
    // A restart ignores the SRV records (the data dir holds a log): even with them gone. The
    // peer URLs are names, so their A records stay.
    let mut only_a = Zone::default();
    for i in 0..3 {
        only_a.a(&format!("infra{i}.example.com"), &ip(sub, i));
    }
    dns.set_zone(only_a);
    c.members[2].kill();
    c.members[2].start();
    c.wait_healthy(HEALTHY_TIMEOUT);
    put_get(&[c.members[2].client_url()], "after-restart");
}

#[test]
fn discovery_srv_name_suffix() {
    if !have_etcdctl() {
        return;
    }
    let sub = subnet::SRV_NAME_SUFFIX;
    // Records under `-foo` only; the plain names hold another cluster's (wrong) targets.
    let mut zone = guide_zone(sub, "-foo", false);
    zone.srv(
        "_etcd-server._tcp.example.com",
        "elsewhere.example.com.",
        PEER_PORT,
    )
    .a("elsewhere.example.com", &ip(sub, 9));
    let dns = DnsServer::start(&dns_ip(sub), zone);
    let mut c = Cluster::empty("srv_name", sub);
    for i in 0..3 {
        let mut args = srv_args(&c, &dns, i, true, "http");
        args.extend(["--discovery-srv-name".into(), "foo".into()]);
        c.add(&format!("infra{i}"), ip(sub, i), args, vec![]);
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);
    wait_member_list(&c, &HTTP_IDS);
}

/// The ssl variant: `_etcd-server-ssl` records, https peers, no `--peer-trusted-ca-file`: the
/// system's CAs (here the test CA through SSL_CERT_FILE) and the SRV domain as server name.
fn ssl_cluster(sub: u8, label: &str, with_domain: bool) -> (Cluster, DnsServer) {
    let dns = DnsServer::start(&dns_ip(sub), guide_zone(sub, "", true));
    let mut c = Cluster::empty(label, sub);
    let ca = Ca::new("srv test CA");
    let ca_file = ca.write(c.dir(), "ca.crt");
    for i in 0..3 {
        let host = format!("infra{i}.example.com");
        let me = ip(sub, i);
        let mut sans = vec![host.as_str(), me.as_str(), "127.0.0.1"];
        if with_domain {
            sans.push("example.com");
        }
        let files = ca.issue_to(
            c.dir(),
            &format!("peer{i}"),
            &format!("infra{i}"),
            &sans,
            false,
        );
        let mut args = srv_args(&c, &dns, i, true, "https");
        args.extend([
            "--peer-cert-file".into(),
            files.cert.unwrap().display().to_string(),
            "--peer-key-file".into(),
            files.key.unwrap().display().to_string(),
        ]);
        let env = vec![("SSL_CERT_FILE".to_string(), ca_file.display().to_string())];
        c.add(&format!("infra{i}"), me, args, env);
    }
    c.start_all();
    (c, dns)
}

#[test]
fn ssl_records_with_the_domain_in_the_san() {
    if !have_etcdctl() {
        return;
    }
    let (mut c, _dns) = ssl_cluster(subnet::SRV_SSL, "srv_ssl", true);
    c.wait_healthy(HEALTHY_TIMEOUT);
    let lines = wait_member_list(&c, &HTTPS_IDS);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("https://infra1.example.com:2380")),
        "{lines:?}"
    );
    let json = etcdctl_ok(
        &[c.members[0].client_url()],
        &["member", "list", "--write-out=json"],
    );
    assert_eq!(
        detcd_tests::json_u64s(&json.stdout, "cluster_id"),
        vec![HTTPS_CLUSTER_ID],
        "{json}"
    );
    put_get(&c.client_urls(), "tls");
}

#[test]
fn ssl_records_without_the_domain_in_the_san_are_refused() {
    let (mut c, _dns) = ssl_cluster(subnet::SRV_SSL_NO_DOMAIN_SAN, "srv_ssl_nosan", false);
    let deadline = Deadline::new(
        Duration::from_secs(30),
        "a member to refuse a peer certificate without the SRV domain",
    );
    loop {
        let log = c.members[0].stderr();
        if log.contains("must carry the SRV domain \"example.com\"")
            && log.contains("not valid for name \"example.com\"")
        {
            break;
        }
        assert!(c.members[0].is_running(), "{}", c.logs(30));
        deadline.check(&c.logs(20));
        deadline.pause();
    }
    // No cluster forms: no member has a leader.
    let out = detcd_tests::http_get(
        &c.members[0].client_addr(),
        "/health",
        Duration::from_secs(2),
    );
    assert!(
        !matches!(&out, Ok((200, body)) if detcd_tests::is_healthy_body(body)),
        "{out:?}"
    );
}

/// Starts one member expected to fail and returns its stderr once it exited with status 1.
fn fails(c: &mut Cluster, name: &str, idx: usize, args: Vec<String>, within: Duration) -> String {
    let sub = c.subnet;
    let i = c.add(name, ip(sub, idx), args, vec![]);
    c.members[i].start();
    let status = c.members[i].wait_exit(within);
    assert_eq!(status.code(), Some(1), "{}", c.members[i].log_tail(30));
    // A refused start leaves no data dir behind.
    let args = &c.members[i].args;
    if let Some(d) = args.iter().position(|a| a == "--data-dir") {
        let dir = std::path::Path::new(&args[d + 1]);
        assert!(!dir.exists(), "{name} left {}", dir.display());
    }
    c.members[i].stderr()
}

#[test]
fn srv_errors_are_etcds() {
    let sub = subnet::SRV_ERRORS;
    let dns = DnsServer::start(&dns_ip(sub), Zone::default());
    let mut c = Cluster::empty("srv_errors", sub);
    let t = Duration::from_secs(20);

    // No records at all.
    let args = srv_args(&c, &dns, 0, false, "http");
    let e = fails(&mut c, "norecords", 0, args, t);
    assert!(
        e.contains(&format!(
            "error querying DNS SRV records for _etcd-server-ssl lookup _etcd-server-ssl._tcp.example.com on {}: no such host; \
             error querying DNS SRV records for _etcd-server lookup _etcd-server._tcp.example.com on {}: no such host",
            dns.resolver_arg(),
            dns.resolver_arg()
        )),
        "{e}"
    );

    dns.set_zone(guide_zone(sub, "", false));
    // A member not in the records.
    let mut args = srv_args(&c, &dns, 3, false, "http");
    args[1] = "infra3".into();
    let e = fails(&mut c, "infra3", 3, args, t);
    assert!(
        e.contains("cannot find local etcd member \"infra3\" in SRV records"),
        "{e}"
    );

    // Plain records, https advertised.
    let mut args = srv_args(&c, &dns, 0, false, "http");
    let i = args
        .iter()
        .position(|a| a == "--initial-advertise-peer-urls")
        .unwrap();
    args[i + 1] = format!("https://{}:{PEER_PORT}", ip(sub, 0));
    let e = fails(&mut c, "mismatch", 0, args, t);
    assert!(
        e.contains(&format!(
            "bootstrap at http://infra0.example.com:2380 from DNS for etcd-server has scheme mismatch with expected peer https://{}:2380",
            ip(sub, 0)
        )),
        "{e}"
    );

    // A listen URL with a domain name.
    let mut args = srv_args(&c, &dns, 0, true, "http");
    let i = args.iter().position(|a| a == "--listen-peer-urls").unwrap();
    args[i + 1] = "http://infra0.example.com:2380".into();
    let e = fails(&mut c, "bindname", 0, args, t);
    assert!(
        e.contains("expected IP in URL for binding (http://infra0.example.com:2380)"),
        "{e}"
    );

    // --initial-cluster alongside --discovery-srv.
    let mut args = srv_args(&c, &dns, 0, false, "http");
    args.extend([
        "--initial-cluster".into(),
        format!("infra0=http://{}:2380", ip(sub, 0)),
    ]);
    let e = fails(&mut c, "conflict", 0, args, t);
    assert!(
        e.contains("multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""),
        "{e}"
    );

    // A DNS server that stops answering: retried with backoff, then a clear exit.
    dns.set_silent(true);
    let args = srv_args(&c, &dns, 0, false, "http");
    let e = fails(&mut c, "timeout", 0, args, Duration::from_secs(60));
    assert!(e.contains("timed out"), "{e}");
    assert!(
        e.contains("DNS SRV discovery failed: _etcd-server-ssl._tcp.example.com did not answer after 4 attempts"),
        "{e}"
    );
}

#[test]
fn gateway_from_srv_records_survives_a_member_death() {
    if !have_etcdctl() {
        return;
    }
    let sub = subnet::SRV_GATEWAY;
    let dns = DnsServer::start(&dns_ip(sub), guide_zone(sub, "", false));
    let mut c = Cluster::empty("srv_gateway", sub);
    for i in 0..3 {
        let args = srv_args(&c, &dns, i, true, "http");
        c.add(&format!("infra{i}"), ip(sub, i), args, vec![]);
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);

    let gw_ip = ip(sub, 20);
    let listen = format!("{gw_ip}:23790");
    let gw_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "gateway",
            "start",
            "--discovery-srv",
            "example.com",
            "--discovery-srv-resolver",
            &dns.resolver_arg(),
            "--listen-addr",
            &listen,
            "--retry-delay",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // Plain records without --insecure-discovery: nothing validates (etcd keeps only https
    // endpoints whose certificates verify); detcd says so instead of falling back to 127.0.0.1.
    let e = fails(
        &mut c,
        "gw-secure",
        21,
        gw_args(&[]),
        Duration::from_secs(20),
    );
    assert!(
        e.contains("no endpoints found in the SRV records of example.com"),
        "{e}"
    );
    // An endpoint that is the gateway's own listen address.
    let own = format!("{}:2379", ip(sub, 22));
    let mut a = gw_args(&["--endpoints", &own]);
    let i = a.iter().position(|x| x == "--listen-addr").unwrap();
    a[i + 1] = own.clone();
    let i = a.iter().position(|x| x == "--discovery-srv").unwrap();
    a.drain(i..i + 2);
    let e = fails(&mut c, "gw-self", 22, a, Duration::from_secs(20));
    assert!(
        e.contains(&format!("SRV or endpoint ({}:2379->{}:2379) should not resolve to the gateway listen addr ({own})", ip(sub, 22), ip(sub, 22))),
        "{e}"
    );

    let g = c.add(
        "gateway",
        gw_ip.clone(),
        gw_args(&["--insecure-discovery"]),
        vec![],
    );
    c.members[g].start();
    let ep = vec![format!("http://{listen}")];
    let deadline = Deadline::new(Duration::from_secs(20), "etcdctl through the gateway");
    loop {
        let out = etcdctl(&ep, &["put", "via-gateway", "1"]);
        if out.success() {
            break;
        }
        assert!(c.members[g].is_running(), "{}", c.members[g].log_tail(30));
        deadline.check(&format!("{out}\n{}", c.members[g].log_tail(20)));
        deadline.pause();
    }
    let log = c.members[g].stderr();
    assert!(log.contains("ready to proxy client requests"), "{log}");

    // Kill a member: every later etcdctl call (each a new connection, some picked for the
    // dead member first) still works through the gateway.
    c.members[1].kill();
    for n in 0..9 {
        let key = format!("after-kill-{n}");
        let deadline = Deadline::new(
            Duration::from_secs(15),
            format!("put {key} through the gateway"),
        );
        loop {
            let out = etcdctl(&ep, &["put", &key, "v"]);
            if out.success() {
                break;
            }
            deadline.check(&format!("{out}\n{}", c.members[g].log_tail(20)));
            deadline.pause();
        }
        let got = etcdctl_ok(&ep, &["get", &key, "--print-value-only"]);
        assert_eq!(got.stdout.trim(), "v");
    }
    let log = c.members[g].stderr();
    assert!(log.contains("deactivated endpoint"), "{log}");

    // The records are looked up again every --retry-delay: a gateway started while they list
    // only the dead member serves once they list live ones.
    let mut dead_only = guide_zone(sub, "", false);
    dead_only.srv.insert(
        "_etcd-client._tcp.example.com".into(),
        vec![(0, 0, CLIENT_PORT, "infra1.example.com.".into())],
    );
    dns.set_zone(dead_only);
    let listen2 = format!("{}:23790", ip(sub, 23));
    let mut a = gw_args(&["--insecure-discovery"]);
    let i = a.iter().position(|x| x == "--listen-addr").unwrap();
    a[i + 1] = listen2.clone();
    let g2 = c.add("gateway2", ip(sub, 23), a, vec![]);
    c.members[g2].start();
    let ep2 = vec![format!("http://{listen2}")];
    let deadline = Deadline::new(
        Duration::from_secs(20),
        "gateway2 to list its only endpoint",
    );
    while !c.members[g2]
        .stderr()
        .contains("ready to proxy client requests")
    {
        assert!(c.members[g2].is_running(), "{}", c.members[g2].log_tail(30));
        deadline.check(&c.members[g2].log_tail(20));
        deadline.pause();
    }
    assert!(
        !etcdctl(&ep2, &["get", "via-gateway"]).success(),
        "the only endpoint is dead"
    );
    dns.set_zone(guide_zone(sub, "", false));
    let deadline = Deadline::new(Duration::from_secs(20), "gateway2 to use the new records");
    loop {
        let out = etcdctl(&ep2, &["get", "via-gateway", "--print-value-only"]);
        if out.success() && out.stdout.trim() == "1" {
            break;
        }
        deadline.check(&format!("{out}\n{}", c.members[g2].log_tail(20)));
        deadline.pause();
    }
}
