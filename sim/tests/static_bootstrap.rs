#![cfg(madsim)]
//! The guide's static three-member bootstrap under simulation.

use detcd_core::config::parse_urls;
use detcd_core::ids::{cluster_id, member_id};
use detcd_core::proto::etcdserverpb::{MemberListRequest, PutRequest, RangeRequest};
use detcd_sim::cluster::{Client, SimCluster, GUIDE_MEMBERS};
use madsim::runtime::Handle;
use std::time::Duration;

async fn client_node() -> madsim::runtime::NodeHandle {
    Handle::current()
        .create_node()
        .name("client")
        .ip("10.0.1.100".parse().unwrap())
        .build()
}

#[madsim::test]
async fn guide_static_cluster_forms_and_serves() {
    let cluster = SimCluster::guide();
    let endpoints = cluster.endpoints();
    let client = client_node().await;
    client
        .spawn(async move {
            let mut c = loop {
                if let Some(c) = Client::connect(&endpoints[1]).await {
                    break c;
                }
                madsim::time::sleep(Duration::from_millis(200)).await;
            };
            let deadline = madsim::time::Instant::now() + Duration::from_secs(10);
            loop {
                let put =
                    c.kv.put(PutRequest {
                        key: b"foo".to_vec(),
                        value: b"bar".to_vec(),
                        ..Default::default()
                    })
                    .await;
                if put.is_ok() {
                    break;
                }
                assert!(
                    madsim::time::Instant::now() < deadline,
                    "no write within 10 s: {put:?}"
                );
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
            let got =
                c.kv.range(RangeRequest {
                    key: b"foo".to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.kvs[0].value, b"bar");
            let members = c
                .cluster
                .member_list(MemberListRequest::default())
                .await
                .unwrap()
                .into_inner();
            // The IDs etcd derives for the guide's members (here at 10.0.1.10-12).
            let mut want: Vec<u64> = GUIDE_MEMBERS
                .iter()
                .map(|(_, ip)| {
                    member_id(
                        &parse_urls(&format!("http://{ip}:2380")).unwrap(),
                        "etcd-cluster-1",
                        None,
                    )
                })
                .collect();
            want.sort();
            let mut ids: Vec<u64> = members.members.iter().map(|m| m.id).collect();
            ids.sort();
            assert_eq!(ids, want);
            assert_eq!(members.header.unwrap().cluster_id, cluster_id(&want));
            let names: Vec<String> = members.members.iter().map(|m| m.name.clone()).collect();
            assert!(
                names.iter().all(|n| n.is_empty() || n.starts_with("infra")),
                "{names:?}"
            );
        })
        .await
        .unwrap();
    drop(cluster);
}
