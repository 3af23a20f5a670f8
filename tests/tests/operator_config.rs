//! What an operator swapping etcd for detcd meets first: etcd's own sample config file,
//! `--wal-dir`, `--max-txn-ops`, `--logger zap` into a file, auto compaction, and flags
//! detcd refuses rather than ignore. Real processes; the client is the etcd-client crate.

use detcd_tests::{
    connect, guide_args, ip, runtime, subnet, within, Cluster, Deadline, HEALTHY_TIMEOUT,
};
use etcd_client::{GetOptions, Txn, TxnOp};
use std::time::Duration;

/// Tests that bind 127.0.0.1 (etcd's sample config, kubeadm's command line) take turns.
static LOCALHOST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// etcd 3.4's etcd.conf.yml.sample, byte for byte: name `default`, data dir
/// `default.etcd` (relative to the working directory), localhost:2379/2380, `logger: zap`
/// to stderr, `enable-v2: true`, `enable-pprof: true`, periodic auto compaction of 1 hour.
#[test]
fn etcds_sample_config_file_starts_detcd_unchanged() {
    let _localhost = LOCALHOST.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::empty("sample_config", 0);
    let sample = c.dir().join("etcd.conf.yml");
    std::fs::copy(
        detcd_tests::workspace_root().join("tests/fixtures/etcd.conf.yml.sample"),
        &sample,
    )
    .unwrap();
    let i = c.add(
        "default",
        "127.0.0.1".into(),
        vec!["--config-file".into(), sample.display().to_string()],
        vec![],
    );
    c.members[i].cwd = Some(c.dir().to_path_buf());
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    let url = c.members[i].client_url();
    runtime().block_on(within(
        30,
        "put/get through the sample config's member",
        async {
            let mut cl = connect(&[url]).await;
            cl.put("configured-by", "etcd.conf.yml.sample", None)
                .await
                .expect("put");
            let r = cl.get("configured-by", None).await.expect("get");
            assert_eq!(r.kvs()[0].value(), b"etcd.conf.yml.sample");
        },
    ));
    assert!(
        c.dir().join("default.etcd").join("member").is_dir(),
        "the data dir is not default.etcd in the working directory"
    );
    let stderr = c.members[i].stderr();
    let json_lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let msg = |m: &str| json_lines.iter().any(|l| l["msg"] == m);
    assert!(msg("ready to serve client requests"), "{stderr}");
    assert!(
        json_lines
            .iter()
            .all(|l| l["level"].is_string() && l["ts"].is_string()),
        "{stderr}"
    );
    assert!(
        json_lines.iter().any(|l| l["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("--enable-pprof has no effect"))),
        "{stderr}"
    );
}

/// `--wal-dir` holds the raft log; `--max-txn-ops` bounds a Txn with etcd's error; `--logger
/// zap --log-outputs <file>` writes JSON lines there; all of it survives a restart.
#[test]
fn wal_dir_txn_limit_and_a_zap_log_file() {
    let mut c = Cluster::empty("operator_flags", subnet::OPERATOR_FLAGS);
    let wal_dir = c.dir().join("wal");
    let log_file = c.dir().join("detcd.log");
    let mut args = guide_args(c.dir(), c.subnet, 0, 1, "operator-flags");
    args.extend([
        "--wal-dir".to_string(),
        wal_dir.display().to_string(),
        "--max-txn-ops".into(),
        "2".into(),
        "--logger".into(),
        "zap".into(),
        "--log-outputs".into(),
        log_file.display().to_string(),
    ]);
    let i = c.add("infra0", ip(c.subnet, 0), args, vec![]);
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    let url = c.members[i].client_url();
    let rt = runtime();
    rt.block_on(within(30, "txns against --max-txn-ops 2", async {
        let mut cl = connect(std::slice::from_ref(&url)).await;
        let puts = |n: usize| {
            Txn::new().and_then(
                (0..n)
                    .map(|k| TxnOp::put(format!("k{k}"), "v", None))
                    .collect::<Vec<_>>(),
            )
        };
        cl.txn(puts(2)).await.expect("a txn of 2 operations");
        let err = cl.txn(puts(3)).await.expect_err("a txn of 3 operations");
        assert!(
            err.to_string()
                .contains("etcdserver: too many operations in txn request"),
            "{err}"
        );
    }));
    assert!(
        wal_dir.join("detcd.wal").is_file(),
        "no raft log in --wal-dir"
    );
    assert!(
        !c.members[i]
            .data_dir
            .join("member")
            .join("detcd.wal")
            .exists(),
        "a raft log in the data dir although --wal-dir was given"
    );
    // The log file: JSON lines only (nothing went to stderr), with etcd's start-up line.
    let read_log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    let text = read_log();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        for key in ["level", "ts", "caller", "msg"] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
    }
    assert!(
        text.contains(r#""msg":"ready to serve client requests""#),
        "{text}"
    );
    assert!(
        !c.members[i].stderr().contains("ready to serve"),
        "logged to stderr too"
    );

    // A restart reads its raft log back from --wal-dir.
    c.members[i].kill();
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    rt.block_on(within(30, "reads after the restart", async {
        let mut cl = connect(&[url]).await;
        let r = cl.get("k1", None).await.expect("get");
        assert_eq!(r.kvs().len(), 1, "k1 lost across the restart");
    }));
    assert_eq!(
        read_log().matches("ready to serve client requests").count(),
        2,
        "the second start appends to the log file"
    );
}

/// `--auto-compaction-retention 2s` (periodic): the leader compacts by itself, keeping the
/// last two seconds of revisions readable.
#[test]
fn periodic_auto_compaction_compacts_on_its_own() {
    let mut c = Cluster::empty("auto_compaction", subnet::OPERATOR_COMPACTION);
    let mut args = guide_args(c.dir(), c.subnet, 0, 1, "auto-compaction");
    args.extend(["--auto-compaction-retention".to_string(), "2s".into()]);
    let i = c.add("infra0", ip(c.subnet, 0), args, vec![]);
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    let url = c.members[i].client_url();
    runtime().block_on(within(60, "an automatic compaction", async {
        let mut cl = connect(&[url]).await;
        let first = cl.put("ticker", "0", None).await.expect("put");
        let first_rev = first.header().unwrap().revision();
        let deadline = Deadline::new(Duration::from_secs(40), "revision 2 to be compacted");
        let mut n = 1;
        loop {
            cl.put("ticker", n.to_string(), None).await.expect("put");
            n += 1;
            match cl
                .get("ticker", Some(GetOptions::new().with_revision(first_rev)))
                .await
            {
                Err(e)
                    if e.to_string()
                        .contains("required revision has been compacted") =>
                {
                    break
                }
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => {}
            }
            deadline.check(&format!("{n} puts so far"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The latest revisions stay readable.
        let now = cl.get("ticker", None).await.expect("get");
        let rev = now.header().unwrap().revision();
        cl.get("ticker", Some(GetOptions::new().with_revision(rev - 1)))
            .await
            .expect("the previous revision is within the retention");
    }));
    assert!(
        c.members[i]
            .stderr()
            .contains("completed auto periodic compaction"),
        "{}",
        c.members[i].log_tail(20)
    );
}

/// etcd's recovery recipe for a full store, with unmodified etcdctl: writes fill the
/// `--quota-backend-bytes` quota, the member raises NOSPACE (listed by `alarm list` and in
/// `endpoint status`), writes are refused with etcd's error while reads and deletes go on;
/// then compact, defrag (which shrinks the data file and keeps reads answered), disarm, and
/// writes work again. The alarm outlives a restart until disarmed.
#[test]
fn the_nospace_recipe_with_etcdctl() {
    if !detcd_tests::have_etcdctl() {
        return;
    }
    use detcd_tests::{etcdctl, etcdctl_ok};
    let mut c = Cluster::empty("quota_alarm", subnet::QUOTA_ALARM);
    let mut args = guide_args(c.dir(), c.subnet, 0, 1, "quota-alarm");
    args.extend(["--quota-backend-bytes".to_string(), "262144".into()]);
    let i = c.add("infra0", ip(c.subnet, 0), args, vec![]);
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    let eps = vec![c.members[i].client_url()];
    etcdctl_ok(&eps, &["put", "small", "x"]);
    let big = "b".repeat(8192);
    let mut refused = None;
    for n in 0..200 {
        let out = etcdctl(&eps, &["put", &format!("big{n}"), &big]);
        if !out.success() {
            refused = Some(out);
            break;
        }
    }
    let refused = refused.expect("200 puts of 8 KiB fit a 256 KiB quota");
    assert!(
        refused
            .stderr
            .contains("etcdserver: mvcc: database space exceeded"),
        "{refused:?}"
    );
    let list = etcdctl_ok(&eps, &["alarm", "list"]);
    assert!(list.stdout.contains("alarm:NOSPACE"), "{list:?}");
    let status = etcdctl_ok(&eps, &["endpoint", "status"]);
    assert!(status.stdout.contains("alarm:NOSPACE"), "{status:?}");
    // Capped: small writes refused too, reads and deletes served.
    assert!(!etcdctl(&eps, &["put", "another", "y"]).success());
    assert_eq!(
        etcdctl_ok(&eps, &["get", "small", "--print-value-only"])
            .stdout
            .trim(),
        "x"
    );
    // /health reports the alarm, as etcd's does.
    let addr = c.members[i].client_addr();
    let (code, body) = detcd_tests::http_get(&addr, "/health", Duration::from_secs(5)).unwrap();
    assert_eq!((code, body.trim()), (503, r#"{"health":"false"}"#));
    // The alarm is in the data file: a restart keeps it (and /health stays 503 meanwhile).
    c.members[i].kill();
    c.members[i].start();
    let deadline = Deadline::new(HEALTHY_TIMEOUT, "the restarted member to list its alarms");
    loop {
        let out = etcdctl(&eps, &["alarm", "list"]);
        if out.success() {
            assert!(out.stdout.contains("alarm:NOSPACE"), "{out:?}");
            break;
        }
        deadline.check(&out);
        deadline.pause();
    }

    // The recipe.
    etcdctl_ok(&eps, &["del", "big", "--prefix"]);
    let rev = detcd_tests::json_u64s(
        &etcdctl_ok(&eps, &["get", "small", "-w", "json"]).stdout,
        "revision",
    )[0];
    etcdctl_ok(&eps, &["compact", &rev.to_string(), "--physical"]);
    let data_file = c.members[i].data_dir.join("member").join("detcd.db");
    let before = std::fs::metadata(&data_file).unwrap().len();
    // Reads keep being answered while the data file is copied.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (eps, stop) = (eps.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = etcdctl(&eps, &["get", "small", "--print-value-only"]);
                if !out.success() || out.stdout.trim() != "x" {
                    failures.push(out);
                }
            }
            failures
        })
    };
    let defrag = etcdctl_ok(&eps, &["defrag"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failures = reader.join().unwrap();
    assert!(
        failures.is_empty(),
        "reads failed around the defragmentation: {failures:?}"
    );
    assert!(
        defrag.stdout.contains("Finished defragmenting etcd member"),
        "{defrag:?}"
    );
    let after = std::fs::metadata(&data_file).unwrap().len();
    assert!(
        after < before,
        "the data file did not shrink: {before} -> {after} bytes"
    );
    etcdctl_ok(&eps, &["alarm", "disarm"]);
    assert!(etcdctl_ok(&eps, &["alarm", "list"])
        .stdout
        .trim()
        .is_empty());
    etcdctl_ok(&eps, &["put", "after", "recovery"]);
    assert_eq!(
        etcdctl_ok(&eps, &["get", "after", "--print-value-only"])
            .stdout
            .trim(),
        "recovery"
    );
    // The member restarts on the defragmented file with everything in it.
    c.members[i].kill();
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    assert_eq!(
        etcdctl_ok(&eps, &["get", "after", "--print-value-only"])
            .stdout
            .trim(),
        "recovery"
    );
    assert_eq!(
        etcdctl_ok(&eps, &["get", "small", "--print-value-only"])
            .stdout
            .trim(),
        "x"
    );
}

/// The command line kubeadm (v1.31) writes into its etcd static pod manifest, unchanged but
/// for the node's address and the file paths: client and peer TLS with client certificates,
/// a plain-HTTP metrics listener on 127.0.0.1:2381, etcd 3.5-era flags. The API server's
/// traffic (over TLS with a client certificate) and the kubelet's probes (`/health` and
/// `/readyz` on the metrics port) work.
#[test]
fn kubeadms_etcd_command_line_starts_detcd_unchanged() {
    if !detcd_tests::have_etcdctl() {
        return;
    }
    let _localhost = LOCALHOST.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::empty("kubeadm", subnet::KUBEADM);
    let node = ip(c.subnet, 0);
    let pki = c.dir().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = detcd_tests::tls::Ca::new("etcd-ca");
    let ca_file = ca.write(&pki, "ca.crt");
    ca.issue_to(
        &pki,
        "server",
        "node1",
        &["localhost", "127.0.0.1", &node],
        false,
    );
    ca.issue_to(
        &pki,
        "peer",
        "node1",
        &["localhost", "127.0.0.1", &node],
        false,
    );
    let client = ca.issue_to(
        &pki,
        "apiserver-etcd-client",
        "kube-apiserver-etcd-client",
        &[],
        false,
    );
    let p = |f: &str| pki.join(f).display().to_string();
    let data_dir = c.dir().join("var-lib-etcd").display().to_string();
    let args: Vec<String> = [
        format!("--advertise-client-urls=https://{node}:2379"),
        format!("--cert-file={}", p("server.crt")),
        "--client-cert-auth=true".into(),
        format!("--data-dir={data_dir}"),
        "--experimental-initial-corrupt-check=true".into(),
        "--experimental-watch-progress-notify-interval=5s".into(),
        format!("--initial-advertise-peer-urls=https://{node}:2380"),
        format!("--initial-cluster=node1=https://{node}:2380"),
        format!("--key-file={}", p("server.key")),
        format!("--listen-client-urls=https://127.0.0.1:2379,https://{node}:2379"),
        "--listen-metrics-urls=http://127.0.0.1:2381".into(),
        format!("--listen-peer-urls=https://{node}:2380"),
        "--name=node1".into(),
        format!("--peer-cert-file={}", p("peer.crt")),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-key-file={}", p("peer.key")),
        format!("--peer-trusted-ca-file={}", p("ca.crt")),
        "--snapshot-count=10000".into(),
        format!("--trusted-ca-file={}", p("ca.crt")),
    ]
    .into();
    let i = c.add("node1", node.clone(), args, vec![]);
    let files = detcd_tests::tls::ClientFiles {
        ca: Some(ca_file),
        ..client
    };
    c.members[i].client_tls = Some(files.clone());
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    // The API server's path: etcdctl over TLS with the client certificate.
    let mut eps = vec![format!("https://{node}:2379")];
    let with_tls = |args: &[&str]| -> Vec<String> {
        files
            .etcdctl_args()
            .into_iter()
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |eps: &[String], args: &[&str]| {
        let a = with_tls(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        detcd_tests::etcdctl_ok(eps, &a)
    };
    run(&eps, &["put", "/registry/pods/default/p", "spec"]);
    eps = vec!["https://127.0.0.1:2379".to_string()];
    let got = run(
        &eps,
        &["get", "/registry/pods/", "--prefix", "--print-value-only"],
    );
    assert_eq!(got.stdout.trim(), "spec");
    // The kubelet's probes, on the plain-HTTP metrics listener.
    for path in ["/health", "/readyz", "/livez", "/metrics"] {
        let (code, body) = detcd_tests::http_get("127.0.0.1:2381", path, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(code, 200, "{path}: {body}");
    }
    // The corrupt-check flag is accepted with its warning, nothing else is.
    let stderr = c.members[i].stderr();
    assert!(
        stderr.contains("--experimental-initial-corrupt-check has no effect"),
        "{stderr}"
    );
}
