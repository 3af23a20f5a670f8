//! etcd discovery over https and through `--discovery-proxy`: a detcd discovery host serving
//! its client URL with a certificate from a CA made in the test; members trust that CA through
//! `SSL_CERT_FILE` (the system's roots, as etcd's Go client finds them), one of them reaching
//! the host only through an HTTP CONNECT proxy run by the test; a member that does not trust
//! the CA keeps retrying with the certificate error logged.

use detcd_tests::tls::{Ca, ClientFiles};
use detcd_tests::{ip, subnet, Cluster, Deadline, CLIENT_PORT, HEALTHY_TIMEOUT, PEER_PORT};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A CONNECT-only HTTP proxy on `addr`, counting the tunnels it opened.
fn connect_proxy(addr: &str) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).unwrap();
    let tunnels = Arc::new(AtomicUsize::new(0));
    let count = tunnels.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || tunnel(client, &count));
        }
    });
    tunnels
}

fn tunnel(mut client: TcpStream, count: &AtomicUsize) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut b).unwrap_or(0) == 0 || head.len() > 8192 {
            return;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    if words.next() != Some("CONNECT") {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
        return;
    }
    let Some(Ok(upstream)) = words.next().map(TcpStream::connect) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    count.fetch_add(1, Ordering::SeqCst);
    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let (mut c1, mut u1) = (client, upstream);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut u1, &mut c1);
    let _ = c1.shutdown(std::net::Shutdown::Write);
}

fn member_args(c: &Cluster, name: &str, me: &str, durl: &str) -> Vec<String> {
    let mut args = detcd_tests::guide_args(c.dir(), 0, 0, 1, "unused");
    let i = args.iter().position(|a| a == "--initial-cluster").unwrap();
    args.drain(i..i + 2);
    detcd_tests::set_flag(&mut args, "--name", name);
    for f in ["--initial-advertise-peer-urls", "--listen-peer-urls"] {
        detcd_tests::set_flag(&mut args, f, &format!("http://{me}:{PEER_PORT}"));
    }
    for f in ["--listen-client-urls", "--advertise-client-urls"] {
        detcd_tests::set_flag(&mut args, f, &format!("http://{me}:{CLIENT_PORT}"));
    }
    let dir = c.dir().join(format!("{name}.etcd"));
    detcd_tests::set_flag(&mut args, "--data-dir", &dir.to_string_lossy());
    args.extend(["--discovery".to_string(), durl.to_string()]);
    args
}

#[test]
fn discovery_over_https_and_through_a_proxy() {
    let s = subnet::DISCOVERY_HTTPS_PROXY;
    let mut c = Cluster::empty("discovery-https", s);
    let ca = Ca::new("discovery test CA");
    let ca_file = ca.write(c.dir(), "ca.crt");
    let host_ip = ip(s, 9);
    let server = ca.issue_to(c.dir(), "host", "host", &[&host_ip], false);
    // The host: https on its client URL, v2 enabled.
    let mut args = member_args(&c, "host", &host_ip, "unused");
    let i = args.iter().position(|a| a == "--discovery").unwrap();
    args.drain(i..i + 2);
    let https = format!("https://{host_ip}:{CLIENT_PORT}");
    detcd_tests::set_flag(&mut args, "--listen-client-urls", &https);
    detcd_tests::set_flag(&mut args, "--advertise-client-urls", &https);
    args.extend([
        "--initial-cluster".to_string(),
        format!("host=http://{host_ip}:{PEER_PORT}"),
        "--cert-file".to_string(),
        server.cert.clone().unwrap().display().to_string(),
        "--key-file".to_string(),
        server.key.clone().unwrap().display().to_string(),
        "--enable-v2".to_string(),
    ]);
    let host = c.add("host", host_ip.clone(), args, vec![]);
    let trust = ClientFiles {
        ca: Some(ca_file.clone()),
        cert: None,
        key: None,
        insecure: false,
    };
    c.members[host].client_tls = Some(trust);
    c.members[host].start();
    c.members[host].wait_healthy(HEALTHY_TIMEOUT);
    let files = c.members[host].client_tls.clone().unwrap();
    let (code, durl) = detcd_tests::tls::curl(&format!("{https}/new?size=2"), &files).unwrap();
    assert_eq!(code, 200, "{durl}");
    assert!(
        durl.starts_with(&format!("{https}/v2/keys/_etcd/registry/")),
        "{durl}"
    );

    let proxy_addr = format!("{}:3128", ip(s, 8));
    let tunnels = connect_proxy(&proxy_addr);
    let env = vec![("SSL_CERT_FILE".to_string(), ca_file.display().to_string())];
    let a = c.add(
        "infra0",
        ip(s, 0),
        member_args(&c, "infra0", &ip(s, 0), &durl),
        env.clone(),
    );
    let mut proxied = member_args(&c, "infra1", &ip(s, 1), &durl);
    proxied.extend([
        "--discovery-proxy".to_string(),
        format!("http://{proxy_addr}"),
    ]);
    let b = c.add("infra1", ip(s, 1), proxied, env);
    // Without the CA: the host's certificate is refused, and the member keeps retrying.
    let untrusting = c.add(
        "infra2",
        ip(s, 2),
        member_args(&c, "infra2", &ip(s, 2), &durl),
        vec![],
    );
    for m in [a, b, untrusting] {
        c.members[m].start();
    }
    c.members[a].wait_healthy(HEALTHY_TIMEOUT);
    c.members[b].wait_healthy(HEALTHY_TIMEOUT);
    assert!(
        tunnels.load(Ordering::SeqCst) > 0,
        "infra1 reached the host through the proxy"
    );
    if detcd_tests::have_etcdctl() {
        let list = detcd_tests::etcdctl_ok(&[c.members[a].client_url()], &["member", "list"]);
        assert!(
            list.stdout.contains("infra0") && list.stdout.contains("infra1"),
            "{}",
            list.stdout
        );
    }
    let deadline = Deadline::new(HEALTHY_TIMEOUT, "infra2's certificate error and retry");
    loop {
        let log = c.members[untrusting].stderr();
        if log.contains("retrying in") && log.to_lowercase().contains("certificate") {
            break;
        }
        deadline.check(&c.members[untrusting].log_tail(5));
        deadline.pause();
    }
    assert!(c.members[untrusting].is_running());
}
