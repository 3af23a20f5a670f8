#![cfg(madsim)]
//! A healthy cluster keeps its peer streams: a stream torn down and reopened pauses
//! replication while the sender reconnects (a per-request channel timeout once ended every
//! stream after 5 s). One test in this binary, because the counter is per process.

use detcd_core::proto::etcdserverpb::PutRequest;
use detcd_net::transport::PEER_STREAMS_OPENED;
use detcd_sim::cluster::{Client, SimCluster};
use madsim::runtime::Handle;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[madsim::test]
async fn healthy_cluster_keeps_its_peer_streams() {
    let cluster = SimCluster::guide();
    let endpoints = cluster.endpoints();
    let client = Handle::current()
        .create_node()
        .name("client")
        .ip("10.0.1.100".parse().unwrap())
        .build();
    client
        .spawn(async move {
            let mut c = loop {
                if let Some(c) = Client::connect(&endpoints[0]).await {
                    break c;
                }
                madsim::time::sleep(Duration::from_millis(200)).await;
            };
            let put = |i: u32| PutRequest {
                key: b"k".to_vec(),
                value: i.to_be_bytes().to_vec(),
                ..Default::default()
            };
            let deadline = madsim::time::Instant::now() + Duration::from_secs(10);
            while c.kv.put(put(0)).await.is_err() {
                assert!(
                    madsim::time::Instant::now() < deadline,
                    "no write within 10 s"
                );
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
            // Let every member's senders connect, then count from there.
            madsim::time::sleep(Duration::from_secs(2)).await;
            let opened = PEER_STREAMS_OPENED.load(Ordering::Relaxed);
            for i in 1..=30 {
                c.kv.put(put(i)).await.expect("write on a healthy cluster");
                madsim::time::sleep(Duration::from_secs(1)).await;
            }
            let reopened = PEER_STREAMS_OPENED.load(Ordering::Relaxed) - opened;
            assert_eq!(
                reopened, 0,
                "peer streams were reopened {reopened} times in 30 s on a healthy network \
                 ({opened} opened before)"
            );
        })
        .await
        .unwrap();
}
