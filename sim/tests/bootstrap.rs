#![cfg(madsim)]
//! The guide's bootstrap paths and error cases under simulation: restarts that ignore changed
//! --initial-* flags, and the three static error cases, each with the guide's message.

use detcd_core::config::ClusterState;
use detcd_core::proto::etcdserverpb::{MemberListRequest, PutRequest, RangeRequest};
use detcd_sim::cluster::{guide_config, start_member, Client, ExitNote, SimCluster, GUIDE_MEMBERS};
use detcd_sim::disk::SimDisk;
use detcd_sim::scenario::wait_serving;
use madsim::runtime::Handle;
use std::time::Duration;

fn client_host() -> madsim::runtime::NodeHandle {
    Handle::current()
        .create_node()
        .name("client")
        .ip("10.0.1.100".parse().unwrap())
        .build()
}

/// Waits until the member has exited, returning how.
async fn exit_within(exit: &ExitNote, bound: Duration) -> Option<String> {
    let deadline = madsim::time::Instant::now() + bound;
    while madsim::time::Instant::now() < deadline {
        if let Some(e) = exit.lock().unwrap().clone() {
            return Some(e);
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Starts the guide's cluster and waits until it serves; returns it with a client host and
/// the member IDs it reports.
async fn serving_guide_cluster() -> (SimCluster, madsim::runtime::NodeHandle, Vec<u64>) {
    let cluster = SimCluster::guide();
    let endpoints = cluster.endpoints();
    let client = client_host();
    let eps = endpoints.clone();
    client
        .spawn(async move { wait_serving(eps, Duration::from_secs(10)).await.unwrap() })
        .await
        .unwrap();
    let ids = client
        .spawn(member_ids(endpoints[0].clone()))
        .await
        .unwrap();
    (cluster, client, ids)
}

async fn member_ids(url: String) -> Vec<u64> {
    let mut c = Client::connect(&url).await.expect("connect");
    let mut ids: Vec<u64> = c
        .cluster
        .member_list(MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner()
        .members
        .iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

#[madsim::test]
async fn restart_ignores_changed_initial_flags() {
    let (mut cluster, client, before) = serving_guide_cluster().await;
    let endpoints = cluster.endpoints();

    cluster.crash(2);
    {
        let mut cfg = cluster.members[2].config.lock().unwrap();
        cfg.initial_cluster_token = "some-other-token".into();
        cfg.initial_cluster_state = ClusterState::Existing;
        cfg.initial_cluster.truncate(1);
    }
    let eps = endpoints.clone();
    client
        .spawn(async move {
            // The crashed member may have led: retry through the election that follows.
            let deadline = madsim::time::Instant::now() + Duration::from_secs(10);
            loop {
                let put = PutRequest {
                    key: b"while-down".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                };
                if let Some(mut c) = Client::connect(&eps[0]).await {
                    if c.kv.put(put).await.is_ok() {
                        break;
                    }
                }
                assert!(
                    madsim::time::Instant::now() < deadline,
                    "no write with one member down"
                );
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap();
    cluster.restart(2);
    let eps = endpoints.clone();
    client
        .spawn(async move { wait_serving(eps, Duration::from_secs(10)).await.unwrap() })
        .await
        .unwrap();
    assert_eq!(cluster.exit_of(2), None);
    let after = client
        .spawn(member_ids(endpoints[2].clone()))
        .await
        .unwrap();
    assert_eq!(
        before, after,
        "the restarted member must keep its identity and cluster"
    );
    let url = endpoints[2].clone();
    let got = client
        .spawn(async move {
            let mut c = Client::connect(&url).await.unwrap();
            let req = RangeRequest {
                key: b"while-down".to_vec(),
                serializable: true,
                ..Default::default()
            };
            c.kv.range(req).await.unwrap().into_inner().kvs.len()
        })
        .await
        .unwrap();
    assert_eq!(
        got, 1,
        "the restarted member caught up with the write it missed"
    );
}

#[madsim::test]
async fn not_listed_exits_with_the_guides_message() {
    let mut cfg = guide_config(&GUIDE_MEMBERS, 1, "etcd-cluster-1");
    cfg.initial_cluster.retain(|m| m.name != "infra1");
    let handle = Handle::current();
    let member = start_member(&handle, cfg, "10.0.1.11".parse().unwrap(), SimDisk::new());
    let exit = exit_within(&member.exit, Duration::from_secs(5))
        .await
        .expect("infra1 kept running");
    assert_eq!(exit, "infra1 not listed in the initial cluster config");
    let db = redb::Builder::new()
        .create_with_backend(member.disk.open())
        .unwrap();
    assert!(
        !detcd_core::raft_log::RaftLog::exists(&db).unwrap(),
        "a refused member wrote a raft log"
    );
}

#[madsim::test]
async fn advertised_url_mismatch_exits_with_the_guides_message() {
    let mut cfg = guide_config(&GUIDE_MEMBERS, 0, "etcd-cluster-1");
    cfg.initial_advertise_peer_urls =
        detcd_core::config::parse_urls("http://10.0.1.10:2390").unwrap();
    let handle = Handle::current();
    let member = start_member(&handle, cfg, "10.0.1.10".parse().unwrap(), SimDisk::new());
    let exit = exit_within(&member.exit, Duration::from_secs(5))
        .await
        .expect("infra0 kept running");
    assert!(
        exit.starts_with(
            "error setting up initial cluster: infra0 has different advertised URLs in the cluster and advertised peer URLs list"
        ),
        "{exit}"
    );
}

#[madsim::test]
async fn conflicting_cluster_id_exits_and_leaves_the_cluster_undisturbed() {
    let (mut cluster, client, before) = serving_guide_cluster().await;
    let endpoints = cluster.endpoints();

    // A fourth process whose --initial-cluster names two running members but another token.
    let intruder_members = [
        ("infra0", "10.0.1.10"),
        ("infra1", "10.0.1.11"),
        ("infra3", "10.0.1.13"),
    ];
    let cfg = guide_config(&intruder_members, 2, "etcd-cluster-2");
    let handle = Handle::current();
    let intruder = start_member(&handle, cfg, "10.0.1.13".parse().unwrap(), SimDisk::new());
    cluster.members.push(intruder);
    let exit = exit_within(&cluster.members[3].exit, Duration::from_secs(10))
        .await
        .expect("the intruder kept running");
    assert!(
        exit.starts_with("conflicting cluster ID to the target cluster ("),
        "{exit}"
    );
    assert!(exit.ends_with("). Exiting."), "{exit}");

    let eps = endpoints.clone();
    client
        .spawn(async move { wait_serving(eps, Duration::from_secs(5)).await.unwrap() })
        .await
        .unwrap();
    let after = client
        .spawn(member_ids(endpoints[1].clone()))
        .await
        .unwrap();
    assert_eq!(before, after, "the running cluster's membership changed");
    for i in 0..3 {
        assert_eq!(
            cluster.exit_of(i),
            None,
            "{} stopped",
            cluster.members[i].name
        );
    }
}

#[madsim::test]
async fn failed_fsync_stops_the_member_and_the_rest_serve() {
    let (mut cluster, client, _) = serving_guide_cluster().await;
    let endpoints = cluster.endpoints();

    cluster.members[1].disk.set_fail_sync(true);
    let eps = endpoints.clone();
    client
        .spawn(async move {
            // Writes go on through the others; infra1's next durable commit fails.
            for i in 0..20 {
                let Some(mut c) = Client::connect(&eps[0]).await else {
                    continue;
                };
                let put = PutRequest {
                    key: format!("k{i}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                };
                let _ = madsim::time::timeout(Duration::from_secs(2), c.kv.put(put)).await;
            }
        })
        .await
        .unwrap();
    let exit = exit_within(&cluster.members[1].exit, Duration::from_secs(10))
        .await
        .expect("infra1 carried on after a failed fsync");
    assert!(exit.contains("fsync") || exit.contains("commit"), "{exit}");

    let eps = vec![endpoints[0].clone(), endpoints[2].clone()];
    client
        .spawn(async move { wait_serving(eps, Duration::from_secs(10)).await.unwrap() })
        .await
        .unwrap();

    // With the disk healthy again, a restart recovers from what was synced.
    cluster.members[1].disk.set_fail_sync(false);
    cluster.crash(1);
    cluster.restart(1);
    let eps = endpoints.clone();
    client
        .spawn(async move { wait_serving(eps, Duration::from_secs(15)).await.unwrap() })
        .await
        .unwrap();
}
