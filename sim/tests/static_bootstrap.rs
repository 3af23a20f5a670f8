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

/// One HTTP/1.1 GET over madsim's simulated TCP: (status line, body).
async fn http_get(addr: &str, path: &str) -> std::io::Result<(String, String)> {
    use madsim::net::TcpStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

/// The simulated members serve etcd's HTTP endpoints with production's routes (net/src/http.rs)
/// over simulated TCP: /health turns healthy once there is a leader, /version is etcd's JSON.
#[madsim::test]
async fn health_and_version_are_served_over_simulated_tcp() {
    let cluster = SimCluster::guide();
    let client = client_node().await;
    client
        .spawn(async move {
            let deadline = madsim::time::Instant::now() + Duration::from_secs(20);
            for (_, ip) in GUIDE_MEMBERS {
                let addr = format!("{ip}:2379");
                loop {
                    let got = http_get(&addr, "/health").await;
                    if let Ok((status, body)) = &got {
                        if status.contains(" 200 ") && body == r#"{"health":"true"}"# {
                            break;
                        }
                    }
                    assert!(
                        madsim::time::Instant::now() < deadline,
                        "{addr}/health never healthy: {got:?}"
                    );
                    madsim::time::sleep(Duration::from_millis(200)).await;
                }
                let (status, body) = http_get(&addr, "/version").await.unwrap();
                assert!(status.contains(" 200 "), "{status}");
                assert!(body.contains(r#""etcdserver":"#), "{body}");
            }
        })
        .await
        .unwrap();
    drop(cluster);
}
