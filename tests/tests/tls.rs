//! TLS end to end: the guide's self-signed certificate cluster and its automatic certificates
//! cluster, with etcdctl's `--cacert --cert --key`; the handshakes that must be refused
//! (other CAs, CNs, host names, revoked serials, peers whose certificate does not name their
//! address, TLS versions); certificate rotation without restart; start-up errors naming the
//! file. Certificates are
//! made in the test with rcgen; curl and `openssl s_client` look at the ports.

use detcd_tests::tls::{s_client, Ca, ClientFiles};
use detcd_tests::{
    etcdctl, have_etcdctl, http_get, ip, subnet, Cluster, CtlOutput, Deadline, Member, CLIENT_PORT,
    GUIDE_TOKEN, HEALTHY_TIMEOUT, PEER_PORT,
};
use std::path::Path;
use std::time::Duration;

fn ctl(files: &ClientFiles, endpoints: &[String], args: &[&str]) -> CtlOutput {
    let mut all = files.etcdctl_args();
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    etcdctl(endpoints, &all)
}

fn ctl_ok(files: &ClientFiles, endpoints: &[String], args: &[&str]) -> CtlOutput {
    let out = ctl(files, endpoints, args);
    assert!(out.success(), "etcdctl failed: {out}");
    out
}

/// The guide's flags with every URL turned to https.
fn https_args(args: &mut [String]) {
    for a in args.iter_mut() {
        *a = a.replace("http://", "https://");
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Waits until `m`'s log contains `needle`.
fn wait_log(m: &Member, needle: &str, secs: u64) {
    let deadline = Deadline::new(
        Duration::from_secs(secs),
        format!("{}'s log to contain {needle:?}", m.name),
    );
    loop {
        let log = format!("{}{}", m.stderr(), m.stdout());
        if log.contains(needle) {
            return;
        }
        deadline.check(&m.log_tail(30));
        deadline.pause();
    }
}

/// The guide's "Self-signed certificates" example: client and peer TLS with a CA each,
/// --client-cert-auth and --peer-client-cert-auth, then everything that must be refused.
#[test]
fn guide_self_signed_certificates() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::guide("tls_guide", subnet::TLS_GUIDE, 3, GUIDE_TOKEN);
    let dir = c.dir().to_path_buf();
    let client_ca = Ca::new("client CA");
    let peer_ca = Ca::new("peer CA");
    let ca_client = client_ca.write(&dir, "ca-client.crt");
    let ca_peer = peer_ca.write(&dir, "ca-peer.crt");
    let mut admin = client_ca.issue_to(&dir, "admin", "admin", &[], false);
    admin.ca = Some(ca_client.clone());
    for (i, m) in c.members.iter_mut().enumerate() {
        let me = ip(subnet::TLS_GUIDE, i);
        let cl = client_ca.issue_to(
            &dir,
            &format!("infra{i}-client"),
            &format!("infra{i}"),
            &[&me, "127.0.0.1"],
            false,
        );
        // 127.0.0.1 too: on loopback the peers' connections come from it, and etcd checks
        // that a peer's client certificate names the address it connects from.
        let pe = peer_ca.issue_to(
            &dir,
            &format!("infra{i}-peer"),
            &format!("infra{i}"),
            &[&me, "127.0.0.1"],
            false,
        );
        https_args(&mut m.args);
        m.args.extend([
            "--client-cert-auth".to_string(),
            format!("--trusted-ca-file={}", path(&ca_client)),
            format!("--cert-file={}", path(cl.cert.as_ref().unwrap())),
            format!("--key-file={}", path(cl.key.as_ref().unwrap())),
            "--peer-client-cert-auth".to_string(),
            format!("--peer-trusted-ca-file={}", path(&ca_peer)),
            format!("--peer-cert-file={}", path(pe.cert.as_ref().unwrap())),
            format!("--peer-key-file={}", path(pe.key.as_ref().unwrap())),
        ]);
        m.client_tls = Some(admin.clone());
    }
    c.start_all();
    // /health over https with the admin's client certificate.
    c.wait_healthy(HEALTHY_TIMEOUT);
    let all = c.client_urls();
    assert!(all[0].starts_with("https://"), "{all:?}");

    let list = ctl_ok(&admin, &all[..1], &["member", "list"]);
    for i in 0..3 {
        let me = ip(subnet::TLS_GUIDE, i);
        assert!(
            list.stdout.contains(&format!("https://{me}:{PEER_PORT}")),
            "peer URL of infra{i} in {list}"
        );
    }
    for (i, ep) in all.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(
            ctl_ok(&admin, std::slice::from_ref(ep), &["put", &key, "v"])
                .stdout
                .trim(),
            "OK"
        );
        let other = vec![all[(i + 1) % 3].clone()];
        assert_eq!(
            ctl_ok(&admin, &other, &["get", &key, "--print-value-only"]).stdout,
            "v\n"
        );
    }
    let (code, body) = detcd_tests::tls::curl(&format!("{}/version", all[0]), &admin).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("etcdserver"), "{body}");

    // Refused: no client certificate, one from another CA, an expired one, plaintext.
    let ep = vec![all[0].clone()];
    let no_cert = ClientFiles {
        ca: Some(ca_client.clone()),
        ..Default::default()
    };
    let out = ctl(
        &no_cert,
        &ep,
        &["--dial-timeout=2s", "--command-timeout=3s", "get", "k0"],
    );
    assert!(
        !out.success(),
        "a client without a certificate was served: {out}"
    );
    let other_ca = Ca::new("another CA");
    let mut stranger = other_ca.issue_to(&dir, "stranger", "admin", &[], false);
    stranger.ca = Some(ca_client.clone());
    let out = ctl(
        &stranger,
        &ep,
        &["--dial-timeout=2s", "--command-timeout=3s", "get", "k0"],
    );
    assert!(
        !out.success(),
        "a client certificate from another CA was accepted: {out}"
    );
    let mut expired = client_ca.issue_to(&dir, "expired", "admin", &[], true);
    expired.ca = Some(ca_client.clone());
    let out = ctl(
        &expired,
        &ep,
        &["--dial-timeout=2s", "--command-timeout=3s", "get", "k0"],
    );
    assert!(
        !out.success(),
        "an expired client certificate was accepted: {out}"
    );
    assert!(detcd_tests::tls::curl(&format!("{}/health", all[0]), &expired).is_err());
    let plain = vec![format!("http://{}:{CLIENT_PORT}", ip(subnet::TLS_GUIDE, 0))];
    let out = etcdctl(
        &plain,
        &["--dial-timeout=2s", "--command-timeout=3s", "get", "k0"],
    );
    assert!(
        !out.success(),
        "plaintext was served on an https listener: {out}"
    );
    assert!(
        http_get(
            &c.members[0].client_addr(),
            "/health",
            Duration::from_secs(2)
        )
        .map(|r| r.0)
        .unwrap_or(0)
            != 200
    );
    wait_log(&c.members[0], "listener=\"client\"", 10);

    // Refused: a peer without a certificate (curl speaks TLS to the peer port, presents nothing).
    let peer_addr = format!("https://{}:{PEER_PORT}/", ip(subnet::TLS_GUIDE, 0));
    let anonymous = ClientFiles {
        ca: Some(ca_peer.clone()),
        ..Default::default()
    };
    assert!(detcd_tests::tls::curl(&peer_addr, &anonymous).is_err());
    wait_log(&c.members[0], "listener=\"peer\"", 10);

    // Still serving after all that.
    assert_eq!(
        ctl_ok(&admin, &ep, &["get", "k2", "--print-value-only"]).stdout,
        "v\n"
    );
}

/// A member whose peer certificate comes from another CA cannot join; the logs say why.
#[test]
fn peer_from_another_ca_cannot_join() {
    let mut c = Cluster::guide("tls_peer_ca", subnet::TLS_PEER_OTHER_CA, 3, GUIDE_TOKEN);
    let dir = c.dir().to_path_buf();
    let peer_ca = Ca::new("peer CA");
    let other_ca = Ca::new("another CA");
    let ca_peer = peer_ca.write(&dir, "ca-peer.crt");
    for (i, m) in c.members.iter_mut().enumerate() {
        let me = ip(subnet::TLS_PEER_OTHER_CA, i);
        let issuer = if i == 2 { &other_ca } else { &peer_ca };
        let pe = issuer.issue_to(
            &dir,
            &format!("infra{i}-peer"),
            &format!("infra{i}"),
            &[&me, "127.0.0.1"],
            false,
        );
        // Peer URLs https, client URLs stay http.
        for a in m.args.iter_mut() {
            if a.contains(&format!(":{PEER_PORT}")) {
                *a = a.replace("http://", "https://");
            }
        }
        m.args.extend([
            "--peer-client-cert-auth".to_string(),
            format!("--peer-trusted-ca-file={}", path(&ca_peer)),
            format!("--peer-cert-file={}", path(pe.cert.as_ref().unwrap())),
            format!("--peer-key-file={}", path(pe.key.as_ref().unwrap())),
        ]);
    }
    c.start_all();
    c.members[0].wait_healthy(HEALTHY_TIMEOUT);
    c.members[1].wait_healthy(HEALTHY_TIMEOUT);
    let stranger = ip(subnet::TLS_PEER_OTHER_CA, 2);
    // infra0 does not trust infra2's server certificate, and refuses its client certificate.
    wait_log(
        &c.members[0],
        &format!("TLS handshake with peer https://{stranger}:{PEER_PORT} failed: invalid peer certificate: UnknownIssuer"),
        20,
    );
    wait_log(
        &c.members[0],
        "error=invalid peer certificate: UnknownIssuer listener=\"peer\"",
        20,
    );
    // infra2 hears why its connections are closed.
    wait_log(
        &c.members[2],
        "refused this member's TLS certificate (remote error: tls: unknown certificate authority)",
        20,
    );
    // infra2 has no leader: not healthy.
    let got = http_get(
        &c.members[2].client_addr(),
        "/health",
        Duration::from_secs(3),
    );
    assert!(
        !matches!(&got, Ok((200, body)) if detcd_tests::is_healthy_body(body)),
        "infra2 reports healthy: {got:?}\n{}",
        c.logs(30)
    );
}

/// --peer-cert-allowed-cn: a peer certificate from the right CA but another CN is refused.
#[test]
fn peer_cert_allowed_cn() {
    let mut c = Cluster::guide("tls_cn", subnet::TLS_ALLOWED_CN, 3, GUIDE_TOKEN);
    let dir = c.dir().to_path_buf();
    let peer_ca = Ca::new("peer CA");
    let ca_peer = peer_ca.write(&dir, "ca-peer.crt");
    for (i, m) in c.members.iter_mut().enumerate() {
        let me = ip(subnet::TLS_ALLOWED_CN, i);
        let cn = if i == 2 { "intruder" } else { "etcd-peer" };
        let pe = peer_ca.issue_to(
            &dir,
            &format!("infra{i}-peer"),
            cn,
            &[&me, "127.0.0.1"],
            false,
        );
        for a in m.args.iter_mut() {
            if a.contains(&format!(":{PEER_PORT}")) {
                *a = a.replace("http://", "https://");
            }
        }
        m.args.extend([
            "--peer-client-cert-auth".to_string(),
            "--peer-cert-allowed-cn=etcd-peer".to_string(),
            format!("--peer-trusted-ca-file={}", path(&ca_peer)),
            format!("--peer-cert-file={}", path(pe.cert.as_ref().unwrap())),
            format!("--peer-key-file={}", path(pe.key.as_ref().unwrap())),
        ]);
    }
    c.start_all();
    c.members[0].wait_healthy(HEALTHY_TIMEOUT);
    c.members[1].wait_healthy(HEALTHY_TIMEOUT);
    wait_log(
        &c.members[0],
        "CommonName authentication failed: certificate CN \"intruder\"",
        20,
    );
}

/// The guide's "Automatic certificates" example: encrypted, not authenticated.
#[test]
fn guide_automatic_certificates() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::guide("tls_auto", subnet::TLS_AUTO, 3, GUIDE_TOKEN);
    let insecure = ClientFiles {
        insecure: true,
        ..Default::default()
    };
    for m in c.members.iter_mut() {
        https_args(&mut m.args);
        m.args
            .extend(["--auto-tls".to_string(), "--peer-auto-tls".to_string()]);
        m.client_tls = Some(insecure.clone());
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);
    let all = c.client_urls();
    assert_eq!(
        ctl_ok(&insecure, &all[..1], &["put", "auto", "tls"])
            .stdout
            .trim(),
        "OK"
    );
    assert_eq!(
        ctl_ok(&insecure, &all[2..], &["get", "auto", "--print-value-only"]).stdout,
        "tls\n"
    );

    // Certificates in <data-dir>/fixtures/{client,peer}, keys 0600.
    let fixtures = c.members[0].data_dir.join("fixtures");
    for side in ["client", "peer"] {
        let key = fixtures.join(side).join("key.pem");
        let cert = fixtures.join(side).join("cert.pem");
        assert!(cert.is_file(), "{} missing", cert.display());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} mode", key.display());
    }
    // The peer port speaks TLS, with the self-signed certificate (O=etcd, the member's IP).
    let peer = format!("{}:{PEER_PORT}", ip(subnet::TLS_AUTO, 0));
    let (ok, text) = s_client(&peer, &["-servername", "x"]);
    assert!(ok, "no TLS handshake on the peer port:\n{text}");
    assert!(
        text.contains("O = etcd") || text.contains("O=etcd"),
        "{text}"
    );
    // Plaintext is not served there.
    assert!(
        http_get(&peer, "/", Duration::from_secs(2))
            .map(|r| r.0)
            .unwrap_or(0)
            != 200
    );

    // Restart: the same certificate is reused and the cluster comes back.
    let before = std::fs::read(fixtures.join("peer").join("cert.pem")).unwrap();
    c.members[0].kill();
    c.members[0].start();
    c.members[0].wait_healthy(HEALTHY_TIMEOUT);
    assert_eq!(
        before,
        std::fs::read(fixtures.join("peer").join("cert.pem")).unwrap()
    );
    assert_eq!(
        ctl_ok(&insecure, &all[..1], &["get", "auto", "--print-value-only"]).stdout,
        "tls\n"
    );
}

/// Certificates are re-read for new connections; --cipher-suites; http and https listeners on
/// one member.
#[test]
fn rotation_cipher_suites_and_mixed_listeners() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::guide("tls_rotation", subnet::TLS_ROTATION, 1, GUIDE_TOKEN);
    let dir = c.dir().to_path_buf();
    let ca = Ca::new("rotation CA");
    let ca_path = ca.write(&dir, "ca.crt");
    let me = ip(subnet::TLS_ROTATION, 0);
    let server = ca.issue_to(&dir, "server", "leaf-one", &[&me], false);
    let files = ClientFiles {
        ca: Some(ca_path.clone()),
        ..Default::default()
    };
    {
        let m = &mut c.members[0];
        let urls = format!("https://{me}:{CLIENT_PORT},http://{me}:2381");
        detcd_tests::set_flag(&mut m.args, "--listen-client-urls", &urls);
        m.args.extend([
            format!("--cert-file={}", path(server.cert.as_ref().unwrap())),
            format!("--key-file={}", path(server.key.as_ref().unwrap())),
            "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string(),
        ]);
        m.client_tls = Some(files.clone());
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);
    let ep = vec![c.members[0].client_url()];
    ctl_ok(&files, &ep, &["put", "r", "1"]);
    // The plaintext listener on the same member.
    let (code, body) = http_get(&format!("{me}:2381"), "/health", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 200, "{body}");

    let addr = format!("{me}:{CLIENT_PORT}");
    let ca_arg = format!("-CAfile={}", path(&ca_path));
    let (ok, text) = s_client(&addr, &[&ca_arg]);
    assert!(ok && text.contains("leaf-one"), "{text}");

    // TLS 1.2 with a suite not in --cipher-suites is refused, with the listed one accepted;
    // TLS 1.1 is refused.
    let (ok, text) = s_client(
        &addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
    );
    assert!(
        !ok,
        "a suite outside --cipher-suites was negotiated:\n{text}"
    );
    let (ok, text) = s_client(
        &addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    );
    assert!(ok, "{text}");
    let (ok, text) = s_client(&addr, &["-tls1_1"]);
    assert!(!ok, "TLS 1.1 was negotiated:\n{text}");

    // Rotate: new files in place, no restart.
    let (cert, key) = ca.issue("leaf-two", &[&me], false);
    std::fs::write(server.key.as_ref().unwrap(), key).unwrap();
    std::fs::write(server.cert.as_ref().unwrap(), cert).unwrap();
    let deadline = Deadline::new(
        Duration::from_secs(10),
        "the rotated certificate to be served",
    );
    loop {
        let (ok, text) = s_client(&addr, &[&ca_arg]);
        if ok && text.contains("leaf-two") {
            break;
        }
        deadline.check(&text);
        deadline.pause();
    }
    assert_eq!(
        ctl_ok(&files, &ep, &["get", "r", "--print-value-only"]).stdout,
        "1\n"
    );
    assert!(c.members[0].is_running());
}

/// Start-up refusals: each names its file or flag, exits 1.
#[test]
fn startup_errors_name_the_file() {
    let c = Cluster::empty("tls_startup", subnet::TLS_STARTUP_ERRORS);
    let dir = c.dir().to_path_buf();
    let ca = Ca::new("startup CA");
    let ca_path = ca.write(&dir, "ca.crt");
    let me = ip(subnet::TLS_STARTUP_ERRORS, 0);
    let good = ca.issue_to(&dir, "good", "good", &[&me], false);
    let other = ca.issue_to(&dir, "other", "other", &[&me], false);
    let old = ca.issue_to(&dir, "old", "old", &[&me], true);
    let missing = dir.join("missing.crt");
    let garbage = dir.join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let cert = |f: &ClientFiles| path(f.cert.as_ref().unwrap());
    let key = |f: &ClientFiles| path(f.key.as_ref().unwrap());
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                format!("--cert-file={}", path(&missing)),
                format!("--key-file={}", key(&good)),
            ],
            path(&missing),
        ),
        (
            vec![
                format!("--cert-file={}", path(&garbage)),
                format!("--key-file={}", key(&good)),
            ],
            path(&garbage),
        ),
        (
            vec![
                format!("--cert-file={}", cert(&good)),
                format!("--key-file={}", key(&other)),
            ],
            "do not match".into(),
        ),
        (
            vec![
                format!("--cert-file={}", cert(&old)),
                format!("--key-file={}", key(&old)),
            ],
            "expired".into(),
        ),
        (
            vec![],
            "TLS key/cert (--cert-file, --key-file) must be provided".into(),
        ),
        (
            vec![
                "--cipher-suites=TLS_RSA_WITH_RC4_128_SHA".into(),
                "--auto-tls".into(),
            ],
            "unexpected TLS cipher suite".into(),
        ),
        (
            vec![
                format!("--cert-file={}", cert(&good)),
                format!("--key-file={}", key(&good)),
                "--client-cert-auth".into(),
                format!("--trusted-ca-file={}", path(&missing)),
            ],
            path(&missing),
        ),
        (
            vec![
                format!("--cert-file={}", cert(&good)),
                format!("--key-file={}", key(&good)),
                "--client-cert-auth".into(),
                format!("--trusted-ca-file={}", path(&ca_path)),
                format!("--client-crl-file={}", path(&garbage)),
            ],
            format!(
                "--client-crl-file {}: not a certificate revocation list",
                path(&garbage)
            ),
        ),
        (
            vec![
                format!("--cert-file={}", cert(&good)),
                format!("--key-file={}", key(&good)),
                "--client-cert-auth".into(),
                format!("--trusted-ca-file={}", path(&ca_path)),
                format!("--client-crl-file={}", path(&missing)),
            ],
            format!("cannot read --client-crl-file {}", path(&missing)),
        ),
        (
            vec!["--auto-tls".into(), "--tls-min-version=TLS1.1".into()],
            "invalid value \"TLS1.1\" for flag -tls-min-version: unexpected TLS version \"TLS1.1\" (must be one of: TLS1.2, TLS1.3)".into(),
        ),
    ];
    let mut c = c;
    for (n, (extra, want)) in cases.into_iter().enumerate() {
        let name = format!("s{n}");
        let mut args = vec![
            "--name".to_string(),
            name.clone(),
            format!("--data-dir={}", path(&dir.join(format!("{name}.etcd")))),
            format!("--listen-client-urls=https://{me}:{CLIENT_PORT}"),
            format!("--advertise-client-urls=https://{me}:{CLIENT_PORT}"),
            format!("--listen-peer-urls=http://{me}:{PEER_PORT}"),
            format!("--initial-advertise-peer-urls=http://{me}:{PEER_PORT}"),
            format!("--initial-cluster={name}=http://{me}:{PEER_PORT}"),
        ];
        args.extend(extra);
        let i = c.add(&name, me.clone(), args, vec![]);
        let m = &mut c.members[i];
        m.start();
        let status = m.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "{}", m.log_tail(20));
        let err = m.stderr();
        assert!(err.contains(&want), "want {want:?} in stderr:\n{err}");
    }
}

/// --client-crl-file (a revoked client certificate is refused at the handshake, and a new
/// list is read without restart), --client-cert-allowed-hostname (only certificates valid for
/// that name) and --tls-min-version=TLS1.3 on one member.
#[test]
fn client_crl_allowed_hostname_and_tls_min_version() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::guide("tls_crl", subnet::TLS_CRL, 1, GUIDE_TOKEN);
    let dir = c.dir().to_path_buf();
    let ca = Ca::new("CRL CA");
    let ca_path = ca.write(&dir, "ca.crt");
    let me = ip(subnet::TLS_CRL, 0);
    let server = ca.issue_to(&dir, "server", "server", &[&me], false);
    let with_ca = |f: ClientFiles| ClientFiles {
        ca: Some(ca_path.clone()),
        ..f
    };
    let admin = with_ca(ca.issue_serial_to(&dir, "admin", "admin", &["admin.example"], 0x1001));
    let revoked = with_ca(ca.issue_serial_to(&dir, "revoked", "admin", &["admin.example"], 0x1002));
    let intruder =
        with_ca(ca.issue_serial_to(&dir, "intruder", "admin", &["intruder.example"], 0x1003));
    let crl = dir.join("revoked.crl");
    std::fs::write(&crl, ca.crl_pem(&[0x1002])).unwrap();
    {
        let m = &mut c.members[0];
        https_args(&mut m.args);
        detcd_tests::set_flag(
            &mut m.args,
            "--listen-peer-urls",
            &format!("http://{me}:{PEER_PORT}"),
        );
        detcd_tests::set_flag(
            &mut m.args,
            "--initial-advertise-peer-urls",
            &format!("http://{me}:{PEER_PORT}"),
        );
        detcd_tests::set_flag(
            &mut m.args,
            "--initial-cluster",
            &format!("{}=http://{me}:{PEER_PORT}", m.name),
        );
        m.args.extend([
            "--client-cert-auth".to_string(),
            format!("--trusted-ca-file={}", path(&ca_path)),
            format!("--cert-file={}", path(server.cert.as_ref().unwrap())),
            format!("--key-file={}", path(server.key.as_ref().unwrap())),
            format!("--client-crl-file={}", path(&crl)),
            "--client-cert-allowed-hostname=admin.example".to_string(),
            "--tls-min-version=TLS1.3".to_string(),
        ]);
        m.client_tls = Some(admin.clone());
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);
    let ep = vec![c.members[0].client_url()];
    ctl_ok(&admin, &ep, &["put", "k", "v"]);

    // The revoked certificate: refused, and etcd's words in the log.
    let out = ctl(
        &revoked,
        &ep,
        &[
            "put",
            "k",
            "v2",
            "--dial-timeout=2s",
            "--command-timeout=3s",
        ],
    );
    assert!(!out.success(), "a revoked certificate was served: {out}");
    wait_log(
        &c.members[0],
        "transport: certificate serial 1002 revoked",
        10,
    );
    wait_log(&c.members[0], "rejected connection", 10);

    // A certificate not valid for --client-cert-allowed-hostname.
    let out = ctl(
        &intruder,
        &ep,
        &["get", "k", "--dial-timeout=2s", "--command-timeout=3s"],
    );
    assert!(
        !out.success(),
        "a certificate for another host was served: {out}"
    );
    wait_log(
        &c.members[0],
        "client certificate authentication failed: certificate not valid for allowed hostname \"admin.example\"",
        10,
    );

    // TLS 1.3 only. With the admin's certificate, so only the version can fail a handshake
    // (and without one, TLS 1.3 lets the client finish its handshake before the server's
    // "certificate required" alert arrives, so s_client's exit status would race that alert).
    let addr = format!("{me}:{CLIENT_PORT}");
    let cert_arg = path(admin.cert.as_ref().unwrap());
    let key_arg = path(admin.key.as_ref().unwrap());
    let (ok, text) = s_client(&addr, &["-tls1_2", "-cert", &cert_arg, "-key", &key_arg]);
    assert!(
        !ok && text.contains("protocol version"),
        "TLS 1.2 was negotiated under --tls-min-version=TLS1.3:\n{text}"
    );
    let (ok, text) = s_client(&addr, &["-tls1_3", "-cert", &cert_arg, "-key", &key_arg]);
    assert!(ok && text.contains("TLSv1.3"), "{text}");

    // A new list revoking the admin's certificate too is read without restart.
    std::fs::write(&crl, ca.crl_pem(&[0x1001, 0x1002])).unwrap();
    let deadline = Deadline::new(
        Duration::from_secs(10),
        "the rewritten CRL to refuse the admin certificate",
    );
    loop {
        let out = ctl(
            &admin,
            &ep,
            &["get", "k", "--dial-timeout=2s", "--command-timeout=3s"],
        );
        if !out.success() {
            break;
        }
        deadline.check(&out.to_string());
        deadline.pause();
    }
    wait_log(
        &c.members[0],
        "transport: certificate serial 1001 revoked",
        10,
    );
    assert!(c.members[0].is_running());
}

/// etcd's SAN check on the peer port (--peer-client-cert-auth): a peer whose client
/// certificate names neither the address its connections come from (127.0.0.1: the kernel's
/// source address for loopback) nor a DNS name that resolves to it is refused after the
/// handshake, with etcd's "rejected connection" line; given a certificate with such a name it
/// joins without restart (the certificate files are re-read).
#[test]
fn peer_certificate_must_name_its_address() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::guide("tls_peer_san", subnet::TLS_PEER_SAN, 3, GUIDE_TOKEN);
    let dir = c.dir().to_path_buf();
    let peer_ca = Ca::new("peer CA");
    let ca_peer = peer_ca.write(&dir, "ca-peer.crt");
    let stranger = ip(subnet::TLS_PEER_SAN, 2);
    let mut infra2_files = None;
    for (i, m) in c.members.iter_mut().enumerate() {
        let me = ip(subnet::TLS_PEER_SAN, i);
        let hosts: Vec<&str> = if i == 2 {
            vec![&me]
        } else {
            vec![&me, "127.0.0.1"]
        };
        let pe = peer_ca.issue_to(&dir, &format!("infra{i}-peer"), "etcd", &hosts, false);
        for a in m.args.iter_mut() {
            if a.contains(&format!(":{PEER_PORT}")) {
                *a = a.replace("http://", "https://");
            }
        }
        m.args.extend([
            "--peer-client-cert-auth".to_string(),
            format!("--peer-trusted-ca-file={}", path(&ca_peer)),
            format!("--peer-cert-file={}", path(pe.cert.as_ref().unwrap())),
            format!("--peer-key-file={}", path(pe.key.as_ref().unwrap())),
        ]);
        if i == 2 {
            infra2_files = Some(pe);
        }
    }
    c.start_all();
    c.members[0].wait_healthy(HEALTHY_TIMEOUT);
    c.members[1].wait_healthy(HEALTHY_TIMEOUT);
    let why = format!("x509: certificate is valid for {stranger}, not 127.0.0.1");
    wait_log(&c.members[0], &why, 20);
    wait_log(&c.members[0], "rejected connection", 20);
    wait_log(&c.members[0], &format!("[\"{stranger}\"]"), 20);
    let infra2 = vec![c.members[2].client_url()];
    let out = etcdctl(&infra2, &["put", "k", "v", "--command-timeout=3s"]);
    assert!(
        !out.success(),
        "infra2 wrote through the cluster while refused: {out}"
    );

    // A DNS SAN naming 127.0.0.1 (localhost) lets infra2 in: the files are re-read.
    let f = infra2_files.unwrap();
    let (cert, key) = peer_ca.issue("etcd", &[&stranger, "localhost"], false);
    std::fs::write(f.key.as_ref().unwrap(), key).unwrap();
    std::fs::write(f.cert.as_ref().unwrap(), cert).unwrap();
    let deadline = Deadline::new(
        Duration::from_secs(30),
        "infra2 to join once its certificate names its address",
    );
    loop {
        let out = etcdctl(&infra2, &["put", "k", "v", "--command-timeout=3s"]);
        if out.success() {
            break;
        }
        deadline.check(&format!("{out}\n{}", c.logs(20)));
        deadline.pause();
    }
    c.wait_healthy(HEALTHY_TIMEOUT);
}
