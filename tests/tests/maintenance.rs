//! etcd's Maintenance calls against real detcd clusters: MoveLeader with `etcdctl
//! move-leader` and etcd's errors, Hash, and Snapshot with `etcdctl snapshot save`, then
//! `detcd snapshot status` and `detcd snapshot restore` into a new cluster.

use detcd_tests::etcd_client::{Client, ConnectOptions};
use detcd_tests::{
    connect, detcd_bin, etcdctl, etcdctl_ok, guide_args, have_etcdctl, http_request_with, ip,
    runtime, subnet, Cluster, Deadline, HEALTHY_TIMEOUT,
};
use std::process::Command;
use std::time::Duration;

/// (member ID, leader ID) as one member's `etcdctl endpoint status` reports them.
fn member_and_leader(endpoint: &str) -> Result<(u64, u64), String> {
    let out = etcdctl(
        &[endpoint.to_string()],
        &["endpoint", "status", "-w", "json"],
    );
    if !out.success() {
        return Err(out.to_string());
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    let status = &v[0]["Status"];
    let member = status["header"]["member_id"].as_u64();
    let leader = status["leader"].as_u64();
    member.zip(leader).ok_or_else(|| out.stdout.clone())
}

/// Every member's ID and the leader they all agree on (index into the members).
fn agreed_leader(endpoints: &[String]) -> (Vec<u64>, usize) {
    let deadline = Deadline::new(Duration::from_secs(30), "every member to name one leader");
    loop {
        let seen: Vec<_> = endpoints.iter().map(|e| member_and_leader(e)).collect();
        if let Ok(all) = seen.iter().cloned().collect::<Result<Vec<_>, _>>() {
            let ids: Vec<u64> = all.iter().map(|(m, _)| *m).collect();
            let leader = all[0].1;
            if all.iter().all(|(_, l)| *l == leader) {
                if let Some(i) = ids.iter().position(|id| *id == leader) {
                    return (ids, i);
                }
            }
        }
        deadline.check(&format!("{seen:?}"));
        deadline.pause();
    }
}

/// The (hash, revision) every member answers Hash with, once they all agree (they may be a
/// moment apart in what they applied).
async fn agreed_hash(endpoints: &[String]) -> (u32, i64) {
    let deadline = Deadline::new(Duration::from_secs(30), "every member to hash alike");
    loop {
        let mut seen = Vec::new();
        for ep in endpoints {
            let mut c = connect(std::slice::from_ref(ep)).await;
            let h = c.hash().await.unwrap();
            seen.push((h.hash(), h.header().unwrap().revision()));
        }
        if seen.iter().all(|h| *h == seen[0]) {
            return seen[0];
        }
        deadline.check(&format!("{seen:?}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// etcd's e2e TestCtlV3MoveLeader, and its errors: etcdctl finds the leader among the
/// endpoints it is given and moves leadership to the named member; the call answers once the
/// target leads. Off the leader: `etcdserver: not leader`; to a non-member: `etcdserver: bad
/// leader transferee`; to a member that is down: etcd's leader transfer timeout.
#[test]
fn move_leader_with_etcdctl_and_etcds_errors() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::start_guide(
        "move-leader",
        subnet::MAINTENANCE_MOVE_LEADER,
        3,
        "move-leader-cluster",
        &[],
    );
    c.wait_healthy(HEALTHY_TIMEOUT);
    let eps = c.client_urls();
    let (ids, lead) = agreed_leader(&eps);
    let target = (lead + 1) % 3;
    let hex = |id: u64| format!("{id:x}");

    // Only a follower given: etcdctl itself finds no leader (etcd's e2e expects this text).
    let out = etcdctl(&[eps[target].clone()], &["move-leader", &hex(ids[target])]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("no leader endpoint given at"), "{out}");

    // The leader given: leadership moves, and the call returns once the target leads.
    let out = etcdctl(&[eps[lead].clone()], &["move-leader", &hex(ids[target])]);
    assert!(out.success(), "{out}");
    let want = format!(
        "Leadership transferred from {} to {}",
        hex(ids[lead]),
        hex(ids[target])
    );
    assert!(out.stdout.contains(&want), "{out}");
    assert_eq!(
        member_and_leader(&eps[target]).unwrap(),
        (ids[target], ids[target]),
        "the target leads when move-leader returns"
    );
    let (_, now) = agreed_leader(&eps);
    assert_eq!(now, target);

    // All endpoints given: etcdctl finds the new leader and moves leadership back.
    let out = etcdctl(&eps, &["move-leader", &hex(ids[lead])]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("Leadership transferred"), "{out}");
    let (_, now) = agreed_leader(&eps);
    assert_eq!(now, lead);

    let rt = runtime();
    rt.block_on(async {
        // etcd's errors, as clients match them.
        let mut follower = connect(&[eps[target].clone()]).await;
        let err = follower.move_leader(ids[lead]).await.unwrap_err();
        assert!(err.to_string().contains("etcdserver: not leader"), "{err}");
        let mut leader = connect(&[eps[lead].clone()]).await;
        let err = leader.move_leader(0x1234).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("etcdserver: bad leader transferee"),
            "{err}"
        );
    });

    // detcd's Hash: equal on every member once they applied the same writes, and a write
    // changes it.
    rt.block_on(async {
        let mut leader = connect(&[eps[lead].clone()]).await;
        for i in 0..20 {
            leader.put(format!("k{i}"), "v", None).await.unwrap();
        }
        let first = agreed_hash(&eps).await;
        leader.put("k0", "changed", None).await.unwrap();
        let second = agreed_hash(&eps).await;
        assert_ne!(first.0, second.0, "a write changes the hash");
        assert_eq!(
            second.1,
            first.1 + 1,
            "the header carries the copy's revision"
        );
    });

    // The JSON gateway as etcd's: `/v3/maintenance/hash` is Hash (3.4's grpc-gateway takes
    // the first of Hash and HashKV, which share the path), `/hashkv` HashKV (3.5), and
    // `/v3/maintenance/snapshot` streams the snapshot as `{"result":...}` lines.
    let addr = c.members[lead].client_addr();
    let post = |path: &str| {
        http_request_with(
            &addr,
            "POST",
            path,
            Some(("application/json", "{}")),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    };
    let (code, body) = post("/v3/maintenance/hash");
    assert_eq!(code, 200, "{body}");
    let hash: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        hash["hash"].as_u64().is_some() && hash.get("compact_revision").is_none(),
        "{body}"
    );
    // etcd 3.5's HashKV path; and grpc-gateway's 404 for a path with no call.
    let (code, body) = post("/v3/maintenance/hashkv");
    assert!(
        code == 200 && body.contains("compact_revision"),
        "{code} {body}"
    );
    assert_eq!(post("/v3/maintenance/nothing").0, 404);
    let (code, body) = post("/v3/maintenance/snapshot");
    assert_eq!(code, 200, "{body:.200}");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:.200}: {e}")))
        .collect();
    assert!(lines.len() >= 2, "chunks and the SHA-256: {body:.300}");
    assert!(
        lines.iter().all(|l| l["result"]["blob"].is_string()),
        "{body:.300}"
    );

    // A target that is down never leads: etcd's timeout after the request timeout
    // (5 s plus two election timeouts), and the old leader stays.
    c.members[target].kill();
    rt.block_on(async {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(30));
        let mut leader = Client::connect([eps[lead].clone()], Some(options))
            .await
            .unwrap();
        let err = leader.move_leader(ids[target]).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("etcdserver: request timed out, leader transfer took too long"),
            "{err}"
        );
        let status = leader.status().await.unwrap();
        assert_eq!(status.leader(), ids[lead]);
        leader.put("after", "timeout", None).await.unwrap();
    });
}

/// `detcd snapshot <args>`: (exit code, stdout, stderr).
fn detcd_snapshot(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(detcd_bin())
        .arg("snapshot")
        .args(args)
        .output()
        .expect("running detcd snapshot");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value etcdctl prints for `key` on `endpoint` (None: no such key).
fn get(endpoint: &str, key: &str) -> Option<String> {
    let out = etcdctl_ok(&[endpoint.to_string()], &["get", key, "--print-value-only"]);
    let v = out.stdout.trim_end_matches('\n');
    (!v.is_empty()).then(|| v.to_string())
}

/// `etcdctl snapshot save` against a detcd member writes etcd's shape of file (size a multiple
/// of 512 plus the SHA-256) holding detcd's snapshot; `detcd snapshot status` reads it;
/// `detcd snapshot restore` makes a new three-member cluster from it (new cluster and member
/// IDs from the flags) that starts with its keys and lease; damaged, truncated and unsigned
/// files and an existing data dir are refused with etcd's messages, leaving nothing behind.
#[test]
fn snapshot_save_status_restore_start() {
    if !have_etcdctl() {
        return;
    }
    let src = Cluster::start_guide(
        "snapshot-source",
        subnet::MAINTENANCE_SNAPSHOT,
        1,
        "snapshot-source",
        &[],
    );
    let ep = src.client_urls()[0].clone();
    // About 300 KiB of values: the stream takes several 32 KiB messages.
    let value = "x".repeat(1000);
    for i in 0..300 {
        etcdctl_ok(
            std::slice::from_ref(&ep),
            &["put", &format!("key{i:03}"), &value],
        );
    }
    etcdctl_ok(std::slice::from_ref(&ep), &["del", "key007"]);
    let lease = etcdctl_ok(std::slice::from_ref(&ep), &["lease", "grant", "600"]);
    let lease_id = lease.stdout.split_whitespace().nth(1).unwrap().to_string();
    etcdctl_ok(
        std::slice::from_ref(&ep),
        &["put", "leased", "yes", "--lease", &lease_id],
    );
    let source_id = member_and_leader(&ep).unwrap().0;

    let file = src.dir().join("saved.db");
    let file_s = file.to_string_lossy().to_string();
    let out = etcdctl_ok(std::slice::from_ref(&ep), &["snapshot", "save", &file_s]);
    assert!(out.stdout.contains("Snapshot saved at"), "{out}");
    let saved = std::fs::read(&file).unwrap();
    assert_eq!(
        saved.len() % 512,
        32,
        "etcd's shape: 512-byte blocks and the SHA-256"
    );
    assert!(saved.len() > 300 * 1000);
    // Writes after the save are not in it.
    etcdctl_ok(std::slice::from_ref(&ep), &["put", "after-save", "v"]);

    let (code, stdout, stderr) = detcd_snapshot(&["status", &file_s, "-w", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let st: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        st["revision"], 303,
        "300 puts, a delete and the leased put: {stdout}"
    );
    assert_eq!(st["totalSize"], saved.len());

    // The restored cluster: three members on other addresses, a new token.
    let token = "restored-cluster";
    let mut r = Cluster::guide("snapshot-restored", subnet::MAINTENANCE_RESTORED, 3, token);
    let restore_args = |i: usize, data_dir: &str| -> Vec<String> {
        let args = guide_args(r.dir(), subnet::MAINTENANCE_RESTORED, i, 3, token);
        let flag = |f: &str| args[args.iter().position(|a| a == f).unwrap() + 1].clone();
        vec![
            "restore".into(),
            file_s.clone(),
            "--name".into(),
            flag("--name"),
            "--initial-cluster".into(),
            flag("--initial-cluster"),
            "--initial-cluster-token".into(),
            token.into(),
            "--initial-advertise-peer-urls".into(),
            flag("--initial-advertise-peer-urls"),
            "--data-dir".into(),
            data_dir.into(),
        ]
    };
    let as_strs = |v: &[String]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Refusals first, each leaving no data dir behind.
    let scratch = r.dir().join("scratch.etcd").to_string_lossy().to_string();
    let mut damaged = saved.clone();
    damaged[saved.len() / 2] ^= 0x20;
    let damaged_path = src.dir().join("damaged.db");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let mut args = restore_args(0, &scratch);
    args[1] = damaged_path.to_string_lossy().to_string();
    let a = as_strs(&args);
    let (code, _, stderr) = detcd_snapshot(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("Error: expected sha256 ["), "{stderr}");
    args.push("--skip-hash-check".into());
    let a = as_strs(&args);
    let (code, _, stderr) = detcd_snapshot(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("snapshot file damaged at byte"), "{stderr}");
    assert!(
        !std::path::Path::new(&scratch).exists(),
        "a failed restore leaves nothing"
    );
    let unsigned_path = src.dir().join("unsigned.db");
    std::fs::write(&unsigned_path, &saved[..saved.len() - 32]).unwrap();
    let mut args = restore_args(0, &scratch);
    args[1] = unsigned_path.to_string_lossy().to_string();
    let a = as_strs(&args);
    let (code, _, stderr) = detcd_snapshot(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Error: snapshot missing hash but --skip-hash-check=false"),
        "{stderr}"
    );
    let mut args = restore_args(0, &scratch);
    args[3] = "not-listed".into();
    let a = as_strs(&args);
    let (code, _, stderr) = detcd_snapshot(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not-listed not listed in the initial cluster config"),
        "{stderr}"
    );
    assert!(!std::path::Path::new(&scratch).exists());

    for i in 0..3 {
        let data_dir = r.members[i].data_dir.to_string_lossy().to_string();
        let a = as_strs(&restore_args(i, &data_dir));
        let (code, _, stderr) = detcd_snapshot(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(code, 0, "{stderr}");
        let (code, _, stderr) = detcd_snapshot(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(code, 1);
        assert!(
            stderr.contains(&format!("Error: data-dir {data_dir:?} exists")),
            "{stderr}"
        );
    }
    r.start_all();
    r.wait_healthy(HEALTHY_TIMEOUT);
    let eps = r.client_urls();
    let (ids, _) = agreed_leader(&eps);
    assert!(!ids.contains(&source_id), "new member IDs from the flags");
    let members = etcdctl_ok(&eps, &["member", "list"]);
    for i in 0..3 {
        assert!(
            members.stdout.contains(&format!(
                "infra{i}, http://{}:2380",
                ip(subnet::MAINTENANCE_RESTORED, i)
            )),
            "{members}"
        );
    }
    for ep in &eps {
        assert_eq!(get(ep, "key000").as_deref(), Some(value.as_str()));
        assert_eq!(get(ep, "key299").as_deref(), Some(value.as_str()));
        assert_eq!(get(ep, "key007"), None, "deleted before the save");
        assert_eq!(get(ep, "after-save"), None, "written after the save");
        assert_eq!(get(ep, "leased").as_deref(), Some("yes"));
    }
    let leases = etcdctl_ok(&eps, &["lease", "list"]);
    assert!(leases.stdout.contains(&lease_id), "{leases}");
    etcdctl_ok(&eps, &["put", "after-restore", "v"]);
    let status = etcdctl_ok(&[eps[0].clone()], &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        v[0]["Status"]["header"]["revision"], 304,
        "the history goes on"
    );
}
