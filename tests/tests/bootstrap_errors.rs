//! The guide's static bootstrap errors: each process exits 1 with the guide's message on stderr.

use detcd_tests::etcd_client::Client;
use detcd_tests::{connect, guide_args, ip, runtime, set_flag, subnet, within, Cluster, PEER_PORT};
use std::time::{Duration, Instant};

/// Starts member `index` of the guide's cluster on `subnet` with `edit` applied to its flags,
/// expects exit status 1 and returns its stderr.
fn run_expect_exit_1(c: &mut Cluster, index: usize, edit: impl FnOnce(&mut Vec<String>)) -> String {
    let mut args = guide_args(c.dir(), c.subnet, index, 3, "etcd-cluster-1");
    edit(&mut args);
    let i = c.add(&format!("infra{index}"), ip(c.subnet, index), args, vec![]);
    c.members[i].start();
    let status = c.members[i].wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(1),
        "exit status\n{}",
        c.members[i].log_tail(40)
    );
    c.members[i].stderr()
}

#[test]
fn local_name_not_in_initial_cluster() {
    let mut c = Cluster::empty("name_not_listed", subnet::BOOTSTRAP_NAME_NOT_LISTED);
    let s = c.subnet;
    let stderr = run_expect_exit_1(&mut c, 1, |args| {
        // infra1 starts with an --initial-cluster that lists infra0 and infra2 only.
        let cluster = format!(
            "infra0=http://{}:{PEER_PORT},infra2=http://{}:{PEER_PORT}",
            ip(s, 0),
            ip(s, 2)
        );
        set_flag(args, "--initial-cluster", &cluster);
    });
    assert!(
        stderr.contains("infra1 not listed in the initial cluster config"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn advertised_peer_url_differs_from_initial_cluster() {
    let mut c = Cluster::empty("url_mismatch", subnet::BOOTSTRAP_URL_MISMATCH);
    let s = c.subnet;
    let stderr = run_expect_exit_1(&mut c, 0, |args| {
        // infra0 listens and advertises on .10, but --initial-cluster says infra0 is .20.
        let cluster = format!(
            "infra0=http://{}:{PEER_PORT},infra1=http://{}:{PEER_PORT},infra2=http://{}:{PEER_PORT}",
            ip(s, 10),
            ip(s, 1),
            ip(s, 2)
        );
        set_flag(args, "--initial-cluster", &cluster);
    });
    assert!(
        stderr.contains(
            "error setting up initial cluster: infra0 has different advertised URLs in the cluster and advertised peer URLs list"
        ),
        "stderr:\n{stderr}"
    );
}

/// (id, name, peer URLs, client URLs) sorted by ID, and the cluster ID.
async fn members(client: &mut Client) -> (u64, Vec<(u64, String, Vec<String>, Vec<String>)>) {
    let r = client.member_list().await.expect("member_list");
    let mut v: Vec<_> = r
        .members()
        .iter()
        .map(|m| {
            (
                m.id(),
                m.name().to_string(),
                m.peer_urls().to_vec(),
                m.client_urls().to_vec(),
            )
        })
        .collect();
    v.sort();
    (r.header().expect("header").cluster_id(), v)
}

#[test]
fn conflicting_cluster_id() {
    // A healthy cluster made with token A ...
    let mut c = Cluster::start_guide(
        "cluster_id_conflict",
        subnet::BOOTSTRAP_CLUSTER_ID_CONFLICT,
        3,
        "token-a",
        &[],
    );
    let s = c.subnet;
    let rt = runtime();
    let urls = c.client_urls();
    let before = rt.block_on(within(30, "member list before", async {
        // Wait for names and client URLs to be published so "unchanged" compares final lists.
        let mut cl = connect(&urls).await;
        let deadline = detcd_tests::Deadline::new(Duration::from_secs(20), "all members published");
        loop {
            let m = members(&mut cl).await;
            if m.1.len() == 3 && m.1.iter().all(|x| !x.1.is_empty() && !x.3.is_empty()) {
                break m;
            }
            deadline.check(&format!("{m:?}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));

    // ... and a fourth process on .13 that believes infra0, infra1 and itself form a new cluster
    // with token B: the peers answer with another cluster ID, and it gives up.
    let initial = format!(
        "infra0=http://{}:{PEER_PORT},infra1=http://{}:{PEER_PORT},infra3=http://{}:{PEER_PORT}",
        ip(s, 0),
        ip(s, 1),
        ip(s, 3)
    );
    let mut args = guide_args(c.dir(), s, 3, 4, "token-b");
    set_flag(&mut args, "--initial-cluster", &initial);
    let i = c.add("infra3", ip(s, 3), args, vec![]);
    let started = Instant::now();
    c.members[i].start();
    let status = c.members[i].wait_exit(Duration::from_secs(10));
    let stderr = c.members[i].stderr();
    assert_eq!(
        status.code(),
        Some(1),
        "infra3's exit status after {:?}; stderr:\n{stderr}",
        started.elapsed()
    );
    assert!(
        stderr.contains("conflicting cluster ID to the target cluster ("),
        "stderr:\n{stderr}"
    );

    // The running cluster is unaffected (wait_healthy skips the exited infra3).
    c.wait_healthy(Duration::from_secs(10));
    let after = rt.block_on(within(30, "member list after", async {
        members(&mut connect(&urls).await).await
    }));
    assert_eq!(after, before, "the running cluster's member list changed");
}
