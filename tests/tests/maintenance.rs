//! etcd's Maintenance calls against real detcd clusters: MoveLeader with `etcdctl
//! move-leader` and etcd's errors, Hash.

use detcd_tests::etcd_client::{Client, ConnectOptions};
use detcd_tests::{
    connect, etcdctl, have_etcdctl, runtime, subnet, Cluster, Deadline, HEALTHY_TIMEOUT,
};
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
            let mut c = connect(&[ep.clone()]).await;
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
